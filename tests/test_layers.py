"""The import graph of the library: layers that only import downwards, no import circles, and
the entry points (launch/, data_prep/, benchmarks/) above the library, never imported by it."""

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Lowest first; a package of `pose` may import its own layer's modules and lower layers only.
LAYERS = [
    {"pose.files", "pose.caches", "pose.timing"},
    {"pose.config", "pose.folders"},
    {"pose.data"},
    {"pose.models", "pose.eval", "pose.viz", "pose.tracking"},
    {"pose.engine"},
    {"pose.sweep"},
]
# Imports inside a function that reach up on purpose, each with its reason.
DEFERRED_UP = {
    # the config checks model.backbone against the one list of names; the registry module
    # imports nothing of the project (a test below holds it to that)
    ("pose.config", "pose.models.registry"),
}
ENTRY_POINTS = ("launch", "data_prep", "benchmarks")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> tuple[set[str], set[str]]:
    """The project modules `path` imports at module level, and inside functions (imports under
    `if TYPE_CHECKING:` are annotations only and left out)."""
    found: tuple[set[str], set[str]] = (set(), set())

    def visit(node: ast.AST, in_function: bool) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        project = {n for n in names if n.split(".")[0] in ("pose", *ENTRY_POINTS)}
        found[in_function].update(project)
        inside = in_function or isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        for child in ast.iter_child_nodes(node):
            visit(child, inside)

    visit(ast.parse(path.read_text()), False)
    return found


def layer_of(module: str) -> int:
    package = ".".join(module.split(".")[:2])
    for level, members in enumerate(LAYERS):
        if package in members:
            return level
    raise AssertionError(f"{module} is in no layer of LAYERS: add its package there")


def library() -> dict[str, tuple[set[str], set[str]]]:
    return {module_name(p): imports(p) for p in sorted((ROOT / "pose").rglob("*.py"))}


def test_the_library_imports_only_downwards_and_never_an_entry_point():
    wrong = []
    for module, (top, inner) in library().items():
        for target in top | inner:
            if target.split(".")[0] in ENTRY_POINTS:
                wrong.append(f"{module} imports the entry point {target}")
            elif layer_of(target) > layer_of(module) and (module, target) not in DEFERRED_UP:
                wrong.append(f"{module} (layer {layer_of(module)}) imports {target} (above)")
    assert wrong == []


def test_no_import_circle_at_module_level():
    graph = {m: {t for t in top if t.startswith("pose")} for m, (top, _) in library().items()}
    graph = defaultdict(set, graph)
    state: dict[str, int] = {}  # 1: on the path, 2: done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph[module]):
            # `from pose.models import x` runs pose/models/__init__.py: an edge to the package
            if state.get(target) == 1:
                raise AssertionError("import circle: " + " -> ".join([*path, target]))
            if state.get(target) is None:
                visit(target, [*path, target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def test_the_registry_imports_nothing_of_the_project():
    top, inner = imports(ROOT / "pose" / "models" / "registry.py")
    assert {m for m in top if m.startswith("pose")} == set()
    # filling itself with the built-in backbones
    assert inner <= {"pose.models.backbones", "pose.models.hrnet", "pose.models.vitpose"}


def test_the_layering_test_sees_an_upward_import(tmp_path):
    """The checker itself: a config module importing the engine is found."""
    path = tmp_path / "probe.py"
    path.write_text("from pose.engine.trainer import train\ndef f():\n    import pose.sweep\n")
    top, inner = imports(path)
    assert top == {"pose.engine.trainer"} and inner == {"pose.sweep"}
    assert layer_of("pose.engine.trainer") > layer_of("pose.config")
