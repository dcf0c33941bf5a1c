"""The import graph of the library: layers that only import downwards, no import circles, and
the entry points (launch/, data_prep/, benchmarks/) above the library, never imported by it."""

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Lowest first; a package of `pose` may import its own layer's modules and lower layers only.
LAYERS = [
    {"pose.files", "pose.caches", "pose.timing"},
    {"pose.config", "pose.folders", "pose.distributed"},
    {"pose.data"},
    {"pose.models", "pose.eval", "pose.viz", "pose.tracking"},
    {"pose.engine", "pose.inference"},
    {"pose.sweep"},
]
# Imports inside a function that reach up on purpose, each with its reason.
DEFERRED_UP = {
    # the one exception: the config checks model.backbone against the one list of names; the
    # registry module imports nothing of the project (a test below holds it to that)
    ("pose.config.tree", "pose.models.registry"),
}
ENTRY_POINTS = ("launch", "data_prep", "benchmarks")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str) -> bool:
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imports(path: Path) -> tuple[set[str], set[str]]:
    """The project modules `path` imports at module level, and inside functions (imports under
    `if TYPE_CHECKING:` are annotations only and left out)."""
    found: tuple[set[str], set[str]] = (set(), set())

    def visit(node: ast.AST, in_function: bool) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from pose.models import hrnet` imports the module pose.models.hrnet
            names = [
                f"{node.module}.{a.name}" if is_module(f"{node.module}.{a.name}") else node.module
                for a in node.names
            ]
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


def find_circle(graph: dict[str, set[str]]) -> list[str] | None:
    """A path that returns to where it started, or None."""
    graph = defaultdict(set, graph)
    state: dict[str, int] = {}  # 1: on the path, 2: done

    def visit(module: str, path: list[str]) -> list[str] | None:
        state[module] = 1
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                return [*path, target]
            if state.get(target) is None:
                found = visit(target, [*path, target])
                if found:
                    return found
        state[module] = 2
        return None

    for module in sorted(graph):
        if module not in state:
            found = visit(module, [module])
            if found:
                return found
    return None


def test_no_import_circle_at_module_level_or_inside_functions():
    """A function-level import that closes a circle (a registry importing the modules that
    import it) hides the circle from the interpreter, not from the design."""
    graph = {
        m: {t for t in top | inner if t.startswith("pose")} for m, (top, inner) in library().items()
    }
    circle = find_circle(graph)
    assert circle is None, "import circle: " + " -> ".join(circle or [])


def test_the_circle_finder_sees_a_function_level_circle():
    graph = {"pose.a": {"pose.b"}, "pose.b": set()}
    assert find_circle(graph) is None
    graph["pose.b"] = {"pose.a"}  # as if imported inside a function of pose.b
    assert find_circle(graph) == ["pose.a", "pose.b", "pose.a"]


def test_the_registry_imports_nothing_of_the_project_and_its_package_fills_it():
    top, inner = imports(ROOT / "pose" / "models" / "registry.py")
    assert {m for m in top | inner if m.startswith("pose")} == set()
    families = [p.stem for p in (ROOT / "pose" / "models").glob("*.py")]
    families = [
        f
        for f in families
        if "register_backbone(" in (ROOT / "pose" / "models" / f"{f}.py").read_text()
    ]
    package = (ROOT / "pose" / "models" / "__init__.py").read_text()
    assert all(f in package for f in families) and len(families) >= 3


def test_the_layering_test_sees_an_upward_import(tmp_path):
    """The checker itself: a config module importing the engine is found."""
    path = tmp_path / "probe.py"
    path.write_text("from pose.engine.trainer import train\ndef f():\n    import pose.sweep\n")
    top, inner = imports(path)
    assert top == {"pose.engine.trainer"} and inner == {"pose.sweep"}
    assert layer_of("pose.engine.trainer") > layer_of("pose.config")
