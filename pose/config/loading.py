"""Loading the config tree: dataclass defaults <- a YAML file <- dotted `key=value` overrides,
converted to each field's type and checked (pose.config.tree); saving it back as YAML. A key
that moved to another section fails with its new name (or, in a config a run or export folder
wrote, is moved with a note: such a file is the record of a finished run)."""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import sys
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from pose.config.tree import Config, ConfigError, fail_key
from pose.files import atomic_write


def load_config(
    path: str | os.PathLike | None = None, overrides: list[str] = (), recorded: bool = False
) -> Config:
    """Defaults <- the YAML file at `path` <- dotted `key=value` overrides, validated.
    `recorded`: the file is a run's or an export's record of its config (written by an earlier
    version, perhaps), whose renamed keys are moved to their new place, with a note."""
    data = to_dict(Config())
    if path is not None:
        mapping = read_yaml_mapping(path)
        if recorded:
            for old, new in move_renamed_keys(mapping):
                print(f"posescale: {path}: '{old}' read as '{new}' (renamed)", file=sys.stderr)
        _merge(data, mapping, prefix="", origin=str(path))
    _merge(data, parse_overrides(overrides), prefix="", origin="command line")
    return build_config(data)


def expand_configs(path: str | os.PathLike | None, runs: list[list[str]]) -> list[Config]:
    """One config per list of overrides, all from the same base file (what sweeps use)."""
    return [load_config(path, overrides) for overrides in runs]


def build_config(data: dict[str, Any]) -> Config:
    """Build and validate a Config from a (possibly partial) nested dict."""
    return build_dataclass(Config, data)


def build_dataclass(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Any dataclass tree of this module's kind (sweep files use it too) from a nested dict:
    typed conversion, unknown keys named, then every section's `check()`."""
    if not isinstance(data, dict):
        fail_key(prefix.rstrip(".") or "the top level", f"must be a mapping, got {data!r}")
    obj = _build(cls, data, prefix)
    _check_tree(obj)
    return obj


def _check_tree(obj: Any) -> None:
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            _check_tree(value)
    check = getattr(obj, "check", None)
    if check is not None:
        check()


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict (tuples as lists) that YAML can write and `build_config` reads back."""

    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, tuple | list):
            return [plain(v) for v in value]
        return value

    return plain(cfg)


def config_yaml(cfg: Config) -> str:
    """The resolved config as YAML (it loads back to the same tree)."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def save_config(cfg: Config, path: str | os.PathLike) -> None:
    """Write the resolved config as YAML, atomically (write a temporary file, then rename)."""
    atomic_write(path, config_yaml(cfg))


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """['train.lr=5e-4', 'model.attention=holistic'] -> nested dict of YAML-parsed values. A key
    given twice with different values is refused (the same value twice is harmless: a launcher
    script and its user may both name the run folder)."""
    nested: dict[str, Any] = {}
    given: dict[str, tuple[str, Any]] = {}
    for item in overrides:
        key, value = parse_override(item)
        if key in given and given[key][1] != value:
            raise ConfigError(
                f"config key '{key}' is given twice on the command line with different values "
                f"('{given[key][0]}' and '{item}'); give it once"
            )
        given[key] = item, value
        node = nested
        *parents, leaf = key.split(".")
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override '{item}': '{part}' is given both a value and keys")
            node = child
        node[leaf] = value
    return nested


def layer_overrides(*layers: list[str] | tuple[str, ...]) -> list[str]:
    """Several lists of overrides as one, a key in a later list replacing the same key in an
    earlier one (a sweep's common overrides, then a run's own, then what the sweep sets)."""
    merged: dict[str, str] = {}
    for layer in layers:
        for item in layer:
            key, _ = parse_override(item)
            merged.pop(key, None)
            merged[key] = item
    return list(merged.values())


def parse_override(item: str) -> tuple[str, Any]:
    """'train.lr=5e-4' -> ('train.lr', 0.0005), the value read as the config files are."""
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key or not re.fullmatch(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*", key):
        raise ConfigError(f"override '{item}' is not of the form section.key=value")
    if text.strip() == "":
        return key, ""
    try:
        return key, yaml.load(text, Loader=_StrictLoader)
    except yaml.YAMLError as e:
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(
            f"config key '{key}': the override value '{text}' is not valid YAML ({problem}); "
            "quote a string, close a list: key=[1,2]"
        ) from None


def shipped_config_folders() -> list[Path]:
    """Where the configs that come with posescale are: a checkout's configs/, and once
    installed `share/posescale/configs` under the environment (or beside the packages, for
    `pip install --target`)."""
    checkout = Path(__file__).resolve().parents[2]
    share = Path("share", "posescale", "configs")
    return [checkout / "configs", Path(sys.prefix) / share, checkout / share]


def find_config(name: str | os.PathLike) -> Path:
    """The config file `name`: a path as given, else a shipped config of that name
    (`demo`, `demo.yaml`, `configs/demo.yaml` and `sweeps/demo` all work from any folder)."""
    path = Path(name)
    if path.is_file():
        return path
    if not path.is_absolute():
        relative = Path(*path.parts[1:]) if path.parts[:1] == ("configs",) else path
        names = [relative] if relative.suffix else [relative.with_suffix(".yaml"), relative]
        for folder in shipped_config_folders():
            for candidate in names:
                if (folder / candidate).is_file():
                    return folder / candidate
    raise ConfigError(
        f"config file '{name}' does not exist (nor is it a shipped config: "
        f"{', '.join(str(f) for f in shipped_config_folders() if f.is_dir()) or 'none found'})"
    )


def read_yaml_mapping(path: str | os.PathLike, what: str = "config file") -> dict[str, Any]:
    """The mapping a YAML file holds (duplicate keys refused); errors call it `what`."""
    path = find_config(path) if what == "config file" else Path(path)
    try:
        data = yaml.load(path.read_text(), Loader=_StrictLoader)
    except yaml.YAMLError as e:
        raise ConfigError(f"{what} '{path}' is not valid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{what} '{path}' must hold a mapping at the top level")
    return data


class _StrictLoader(yaml.SafeLoader):
    """YAML 1.2-style scalars: only true/false are booleans ('off' stays a string), and
    '1e-3' is a float. A key written twice in one mapping is an error (plain YAML keeps the
    last one, so a section written twice silently resets what the first one set)."""

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"duplicate key '{key}' (first at line {seen[key] + 1})",
                    key_node.start_mark,
                )
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


_StrictLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d+$"),
    list("-+0123456789."),
)


# --------------------------------------------------------------------------------------------
# Internals: merging and typed construction
# --------------------------------------------------------------------------------------------


# Keys that moved to the section of the component that acts on them: old name -> new name.
RENAMED_KEYS = {
    "train.log_every": "log.every_steps",
    "train.checkpoint_every": "checkpoint.every_steps",
    "train.keep_last": "checkpoint.keep_last",
    "train.eval_every": "eval.every_epochs",
    **{f"train.{key}": f"optimizer.{key}" for key in ("lr", "scale_lr", "weight_decay")},
    **{f"train.{key}": f"optimizer.{key}" for key in ("layer_decay", "grad_clip")},
    "train.optimizer": "optimizer.name",
    "train.schedule": "schedule.name",
    **{f"train.{k}": f"schedule.{k}" for k in ("warmup_steps", "lr_steps", "lr_factor")},
    "train.cosine_start": "schedule.cosine_start",
    **{f"train.{k}": f"engine.{k}" for k in ("precision", "zero_stage", "overlap_comm")},
    **{f"train.{k}": f"engine.{k}" for k in ("bucket_mb", "memory_format", "compile")},
    "train.activation_checkpointing": "engine.activation_checkpointing",
    **{f"train.{key}": f"loss.{key}" for key in ("ohkm", "ohkm_topk", "joint_weights")},
    "log.panel_people": "eval.panel_people",
    "log.panel_joints": "eval.panel_joints",
}


def move_renamed_keys(mapping: dict[str, Any]) -> list[tuple[str, str]]:
    """Move every renamed key of a nested config mapping to its new place, in place; returns
    the (old, new) names moved."""
    moved = []
    for old, new in RENAMED_KEYS.items():
        old_section, old_key = old.split(".")
        section = mapping.get(old_section)
        if isinstance(section, dict) and old_key in section:
            new_section, new_key = new.split(".")
            mapping.setdefault(new_section, {})[new_key] = section.pop(old_key)
            moved.append((old, new))
    return moved


def _merge(base: dict[str, Any], update: dict[str, Any], prefix: str, origin: str) -> None:
    for key, value in update.items():
        dotted = f"{prefix}{key}"
        if dotted in RENAMED_KEYS:
            raise ConfigError(
                f"config key '{dotted}' ({origin}) is now '{RENAMED_KEYS[dotted]}' (the same "
                "value and unit); rename it there"
            )
        if key not in base:
            _unknown_key(dotted, list(base), origin)
        if isinstance(base[key], dict):
            if not isinstance(value, dict):
                raise ConfigError(f"'{dotted}' ({origin}) is a section; give it a mapping")
            _merge(base[key], value, f"{dotted}.", origin)
        else:
            base[key] = value


def _unknown_key(dotted: str, known: list[str], origin: str) -> None:
    leaf = dotted.rsplit(".", 1)[-1]
    section = dotted.rsplit(".", 1)[0] if "." in dotted else "the top level"
    hint = difflib.get_close_matches(leaf, known, n=1)
    maybe = f"; did you mean '{hint[0]}'?" if hint else ""
    raise ConfigError(
        f"unknown config key '{dotted}' ({origin}){maybe} Known keys in {section}: "
        + ", ".join(known)
    )


def _build(cls: type, data: dict[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in data:
            kwargs[f.name] = _convert(data[f.name], hints[f.name], f"{prefix}{f.name}")
    unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        _unknown_key(f"{prefix}{sorted(unknown)[0]}", [f.name for f in dataclasses.fields(cls)], "")
    return cls(**kwargs)


def _convert(value: Any, typ: Any, key: str) -> Any:
    origin = typing.get_origin(typ)
    args = typing.get_args(typ)
    if dataclasses.is_dataclass(typ):
        if not isinstance(value, dict):
            fail_key(key, f"is a section; got {value!r}")
        return _build(typ, value, f"{key}.")
    if origin is Literal:
        if isinstance(value, bool) or value not in args:
            allowed = ", ".join(repr(a) if isinstance(a, str) else str(a) for a in args)
            fail_key(key, f"{value!r} is not allowed; choose one of: {allowed}")
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(value, inner[0], key)
    if origin is dict:
        if not isinstance(value, dict):
            fail_key(key, f"expects a mapping, got {value!r}")
        return {str(k): _convert(v, args[1], f"{key}.{k}") if args else v for k, v in value.items()}
    if origin in (list, tuple):
        return _convert_sequence(value, origin, args, key)
    return _convert_scalar(value, typ, key)


def _convert_sequence(value: Any, origin: type, args: tuple, key: str) -> list | tuple:
    if not isinstance(value, list | tuple):
        fail_key(key, f"expects a list, got {value!r}")
    if origin is tuple and args and args[-1] is not Ellipsis:
        if len(value) != len(args):
            fail_key(key, f"expects {len(args)} values, got {len(value)}: {value!r}")
        return tuple(_convert(v, t, f"{key}[{i}]") for i, (v, t) in enumerate(zip(value, args)))
    item = args[0] if args else Any
    items = [_convert(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    return tuple(items) if origin is tuple else items


def _convert_scalar(value: Any, typ: Any, key: str) -> Any:
    if typ is bool and not isinstance(value, bool):
        fail_key(key, f"expects true or false, got {value!r}")
    if typ is int and (isinstance(value, bool) or not isinstance(value, int)):
        fail_key(key, f"expects an integer, got {value!r}")
    if typ is float:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            fail_key(key, f"expects a number, got {value!r}")
        try:
            number = float(value)
        except ValueError:
            fail_key(key, f"expects a number, got {value!r}")
        if not math.isfinite(number):
            fail_key(key, f"expects a finite number, got {value!r}")
        return number
    if typ is str:
        if isinstance(value, bool) or value is None or isinstance(value, dict | list):
            fail_key(key, f"expects a string, got {value!r}")
        return str(value)
    return value
