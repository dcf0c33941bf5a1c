"""The config reference (docs/config.md), made from the tree itself: every key with its type,
default and meaning, the meaning being the comment written at the field (above it, or after
it). `tests/test_docs.py` checks that docs/config.md is this module's output, so the page cannot
drift from the code, and that every key has a meaning.

    python -m pose.config.reference > docs/config.md
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import typing

from pose.config.loading import to_dict
from pose.config.tree import Config

FIELD = re.compile(r"^    (\w+): (.+?) = (.+?)(?:\s+#\s*(.*))?$")
HEADER = """# Configuration reference

Every config key, its type, its default and what it does, made from the code
(`python -m pose.config.reference`); the sections and how a config is loaded are in
[Training](training.md#configuration). `--print-config` on `launch/train.py` prints the resolved
config of a file with its overrides, every key included:

```bash
.venv/bin/python launch/train.py --config configs/demo.yaml --print-config optimizer.lr=5e-4
```
"""


def field_meanings(cls: type) -> dict[str, str]:
    """The comment of each field of a config dataclass: the lines above it and its own."""
    meanings, above = {}, []
    for line in inspect.getsource(cls).splitlines():
        stripped = line.strip()
        if line.startswith("    #"):
            above.append(stripped.lstrip("#").strip())
            continue
        found = FIELD.match(line)
        if found:
            meanings[found[1]] = " ".join([*above, found[4] or ""]).strip()
        above = []
    return meanings


def config_reference() -> str:
    """docs/config.md: one table a section."""
    hints = typing.get_type_hints(Config)
    defaults = to_dict(Config())
    parts = [HEADER]
    top = [f for f in dataclasses.fields(Config) if not dataclasses.is_dataclass(hints[f.name])]
    parts.append(_table("top level", Config, top, defaults, prefix=""))
    for f in dataclasses.fields(Config):
        cls = hints[f.name]
        if dataclasses.is_dataclass(cls):
            fields = dataclasses.fields(cls)
            parts.append(_table(f"`{f.name}`", cls, fields, defaults[f.name], f"{f.name}."))
            parts += _item_tables(cls, f"{f.name}.")
    return "\n".join(parts)


def _item_tables(cls: type, prefix: str) -> list[str]:
    """A table for the items of each list-of-sections key of `cls` (data.datasets)."""
    tables = []
    for f in dataclasses.fields(cls):
        args = typing.get_args(typing.get_type_hints(cls)[f.name])
        if args and dataclasses.is_dataclass(args[0]):
            item = args[0]
            title = f"each item of `{prefix}{f.name}`"
            tables.append(_table(title, item, dataclasses.fields(item), to_dict(item()), ""))
    return tables


def missing_meanings() -> list[str]:
    """Keys whose field has no comment to say what they do."""
    hints = typing.get_type_hints(Config)
    missing = [
        f"{f.name}"
        for f in dataclasses.fields(Config)
        if f.name not in field_meanings(Config) and not dataclasses.is_dataclass(hints[f.name])
    ]
    for f in dataclasses.fields(Config):
        cls = hints[f.name]
        if dataclasses.is_dataclass(cls):
            meanings = field_meanings(cls)
            missing += [
                f"{f.name}.{g.name}" for g in dataclasses.fields(cls) if not meanings.get(g.name)
            ]
            for g in dataclasses.fields(cls):
                args = typing.get_args(typing.get_type_hints(cls)[g.name])
                if args and dataclasses.is_dataclass(args[0]):
                    inner = field_meanings(args[0])
                    missing += [
                        f"{f.name}.{g.name}[].{h.name}"
                        for h in dataclasses.fields(args[0])
                        if not inner.get(h.name)
                    ]
    return missing


def _table(title: str, cls: type, fields, defaults: dict, prefix: str) -> str:
    doc = (inspect.getdoc(cls) or "").split("\n\n")[0].replace("\n", " ")
    lines = [f"## {title}", ""]
    if doc and cls is not Config:
        lines += [doc, ""]
    lines += ["| key | type | default | meaning |", "|---|---|---|---|"]
    hints, meanings = typing.get_type_hints(cls), field_meanings(cls)
    for f in fields:
        kind = _type_name(hints[f.name])
        default = defaults[f.name]
        shown = '`""`' if default == "" else f"`{default}`"
        meaning = meanings.get(f.name, "").replace("|", "\\|")
        lines.append(f"| `{prefix}{f.name}` | {kind} | {shown} | {meaning} |")
    return "\n".join(lines) + "\n"


def _type_name(kind) -> str:
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin is typing.Literal:
        return " \\| ".join(f"`{a}`" for a in args)
    if origin in (list, tuple):
        inner = ", ".join(
            "section" if dataclasses.is_dataclass(a) else _type_name(a)
            for a in args
            if a is not Ellipsis
        )
        return f"{origin.__name__}[{inner}]"
    return getattr(kind, "__name__", str(kind))


if __name__ == "__main__":
    print(config_reference(), end="")
