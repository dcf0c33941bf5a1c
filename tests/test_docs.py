"""The docs cannot drift from the code: every config key that README.md, docs/ and
slurm/README.md name exists in the config tree, and every flag they give a `launch/` or
`data_prep/` program is one that program takes. `make docs` (run by `make test`) checks links,
pages and API references."""

import dataclasses
import re
import typing
from pathlib import Path

import pytest

from pose.config import Config

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "slurm" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SECTIONS = [
    name for name, t in typing.get_type_hints(Config).items() if dataclasses.is_dataclass(t)
]
# `section.key` in backticks (alone, or as key=value / key: value), or key=value in a command
KEY_IN_BACKTICKS = re.compile(rf"`((?:{'|'.join(SECTIONS)})\.[a-z_0-9]+)(?:[=:][^`]*)?`")
KEY_OVERRIDE = re.compile(rf"(?<![\w./-])((?:{'|'.join(SECTIONS)})\.[a-z_0-9]+)=")
PROGRAM = re.compile(r"(?:launch/(\w+)\.py|data_prep[./](\w+)(?:\.py)?)")
FLAG = re.compile(r"(?<![\w-])(--[a-z][a-z0-9-]*)")


def config_keys() -> set[str]:
    hints = typing.get_type_hints(Config)
    keys = set()
    for section in SECTIONS:
        cls = hints[section]
        keys |= {f"{section}.{f.name}" for f in dataclasses.fields(cls)}
    return keys


FILE_SUFFIXES = {"py", "sbatch", "sh", "yaml", "json", "jsonl", "md", "png", "onnx", "pt", "pt2"}


def named_keys(text: str) -> set[str]:
    found = set(KEY_IN_BACKTICKS.findall(text)) | set(KEY_OVERRIDE.findall(text))
    return {k for k in found if k.rsplit(".", 1)[1] not in FILE_SUFFIXES}  # train.py is a file


def unknown_keys(text: str) -> set[str]:
    return named_keys(text) - config_keys()


def program_flags(name: str) -> set[str]:
    """The flags a program's argument parser declares (its source's `--...` literals)."""
    for path in (ROOT / "launch" / f"{name}.py", ROOT / "data_prep" / f"{name}.py"):
        if path.is_file():
            return set(re.findall(r"[\"'](--[a-z][a-z0-9-]*)[\"']", path.read_text()))
    raise AssertionError(f"no program {name} in launch/ or data_prep/")


def commands(text: str) -> list[str]:
    """Each command line that runs a launch/ or data_prep/ program: lines of code blocks and
    inline code, continuation lines joined."""
    text = text.replace("\\\n", " ")
    lines = [line for line in text.splitlines() if PROGRAM.search(line)]
    inline = [m for line in lines for m in re.findall(r"`([^`]+)`", line)]
    return [line for line in [*lines, *inline] if PROGRAM.search(line)]


def unknown_flags(text: str) -> set[str]:
    """`program --flag` pairs whose flag the program does not take."""
    wrong = set()
    for command in commands(text):
        found = PROGRAM.search(command)
        name = found[1] or found[2]
        rest = command[found.end() :].split("#")[0]  # a shell comment is prose
        rest = re.split(r"\s(?:&&|\||;)\s|`", rest)[0]  # up to the next command
        for flag in FLAG.findall(rest):
            if flag not in program_flags(name) and flag != "--help":
                wrong.add(f"{name} {flag}")
    return wrong


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_config_key_the_docs_name_exists(doc):
    assert unknown_keys(doc.read_text()) == set()


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_flag_the_docs_give_a_program_exists(doc):
    assert unknown_flags(doc.read_text()) == set()


def test_the_checks_find_a_renamed_key_and_a_renamed_flag():
    readme = (ROOT / "README.md").read_text()
    assert "engine.zero_stage" in named_keys(readme) and unknown_keys(readme) == set()
    renamed = readme.replace("engine.zero_stage", "train.zero_level")
    assert unknown_keys(renamed) == {"train.zero_level"}
    assert unknown_keys("set `model.atention: holistic`") == {"model.atention"}
    assert unknown_keys("run `launch/train.py --config c.yaml eval.flip=false`") == {"eval.flip"}
    assert "shard_coco --dets" not in unknown_flags(readme)
    renamed = readme.replace("--dets", "--detections")
    assert unknown_flags(renamed) == {"shard_coco --detections"}
    assert unknown_flags("`launch/export.py --checkpoint R --out O --no-chek`") == {
        "export --no-chek"
    }


def test_the_config_reference_is_the_codes_and_every_key_has_a_meaning():
    """docs/config.md is `python -m pose.config.reference > docs/config.md`; a key added without
    a comment saying what it does, or a reference not regenerated, fails here."""
    from pose.config.reference import config_reference, missing_meanings

    assert missing_meanings() == []
    assert (ROOT / "docs" / "config.md").read_text() == config_reference(), (
        "regenerate: python -m pose.config.reference > docs/config.md"
    )
    assert named_keys((ROOT / "docs" / "config.md").read_text()) == config_keys()
