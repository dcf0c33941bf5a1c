"""What the offline wheelhouse carries (launch/wheelhouse_plan.py): everything posescale needs on
the node except torch, torchvision, triton and what only they bring, whoever asks for them."""

import json

from launch.wheelhouse_plan import main, plan


def package(name: str, version: str, requires=(), requested=False, extras=()) -> dict:
    entry = {"metadata": {"name": name, "version": version, "requires_dist": list(requires)}}
    if requested:
        entry.update(requested=True, requested_extras=list(extras))
    return entry


# A resolution shaped as pip's report of `posescale[export]` for Python 3.12: timm asks for
# torch besides posescale; torch brings its CUDA 12 libraries, triton, sympy and (on 3.12)
# setuptools; sympy is also needed by onnx-ir, which the export extra brings.
REPORT = {
    "install": [
        package(
            "posescale",
            "0.1.0",
            [
                "torch>=2.5",
                "numpy",
                "timm",
                'onnx-ir; extra == "export"',
                'pytest; extra == "test"',
            ],
            requested=True,
            extras=["export"],
        ),
        package("timm", "1.0.31", ["torch", "torchvision", "huggingface_hub"]),
        package("huggingface_hub", "2.4.0", ['Jinja2; extra == "testing"', "filelock"]),
        package("filelock", "4.2.12"),
        package("onnx-ir", "1.1.0", ["sympy>=1.13"]),
        package("torchvision", "0.22.1", ["torch==2.7.1", "numpy"]),
        package("numpy", "2.4.6"),
        package(
            "torch",
            "2.7.1",
            [
                "filelock",
                "sympy>=1.13.3",
                "Jinja2",
                'setuptools; python_version >= "3.12"',
                'nvidia-cublas-cu12==12.6.4.1; platform_system == "Linux"',
                'triton==3.3.1; platform_system == "Linux"',
            ],
        ),
        package("sympy", "1.14.0", ["mpmath<1.4"]),
        package("mpmath", "1.3.0"),
        package("Jinja2", "3.1.6", ["MarkupSafe>=2.0"]),
        package("MarkupSafe", "3.0.4"),
        package("setuptools", "84.2.1"),
        package("nvidia-cublas-cu12", "12.6.4.1"),
        package("triton", "3.3.1", ["setuptools>=40.8.0"]),
    ]
}


def names(packages) -> set[str]:
    return {p["metadata"]["name"] for p in packages}


def test_torch_and_what_only_it_brings_are_left_out_whoever_asks_for_torch():
    kept, left = plan(REPORT, "3.12")
    # numpy and sympy stay: posescale and onnx-ir need them too; pytest's extra was not asked for
    assert names(kept) == {
        "posescale",
        "numpy",
        "timm",
        "huggingface_hub",
        "filelock",
        "onnx-ir",
        "sympy",
        "mpmath",
    }
    left_out = {p["metadata"]["name"]: asked for p, asked in left}
    assert left_out["torch"] == ["posescale", "timm"]
    assert left_out["torchvision"] == ["timm"]
    assert set(left_out) == {
        "torch",
        "torchvision",
        "triton",
        "nvidia-cublas-cu12",
        "setuptools",
        "Jinja2",
        "MarkupSafe",
    }
    assert left_out["setuptools"] == []  # only torch and triton need it: no build tools carried


def test_the_script_writes_the_pins_and_lists_what_it_left_out(tmp_path, capsys):
    (tmp_path / "report.json").write_text(json.dumps(REPORT))
    keep = tmp_path / "keep.txt"
    assert main([str(tmp_path / "report.json"), "--python", "3.12", "--keep", str(keep)]) == 0
    assert "torch==2.7.1" not in keep.read_text() and "sympy==1.14.0\n" in keep.read_text()
    printed = capsys.readouterr().out
    assert "torch==2.7.1 (required by posescale, timm)" in printed
    assert "nvidia-cublas-cu12==12.6.4.1 (needed only through torch)" in printed
