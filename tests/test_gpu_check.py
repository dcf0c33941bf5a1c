"""benchmarks/gpu_check.py (`make gpu-check`) on a CPU: it says there is no GPU and exits 0;
with --cpu --quick it goes through every path the GPU run takes (the gpu-marked tests, shards
made here, the device batch, DALI and the torch backend end to end, a compiled row, FLOPs, the
report files); a row that raises is recorded and the rest still runs; a deadline skips rows."""

import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def gpu_check():
    """benchmarks/gpu_check.py as a module."""
    from benchmarks import gpu_check

    return gpu_check


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_without_a_gpu_it_says_so_and_exits_0(run_python, tmp_path):
    done = run_python(["benchmarks/gpu_check.py", "--out", tmp_path / "out"])
    assert done.returncode == 0, done.stderr[-2000:]
    assert "no CUDA GPU here" in done.stdout
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_the_whole_check_runs_on_a_cpu_tests_and_a_compiled_row_included(run_python, tmp_path):
    out = tmp_path / "out"
    done = run_python(["benchmarks/gpu_check.py", "--cpu", "--quick", "--out", out])
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["machine"]["python"] == sys.version.split()[0]
    outcomes = {t["test"].split("::")[1]: t for t in report["tests"]["results"]}
    bf16 = outcomes["test_a_bf16_step_runs_in_bf16_and_its_gradients_match_fp32"]
    assert bf16["outcome"] == "passed"
    nccl = outcomes["test_nccl_reduces_through_the_projects_distributed_setup"]
    assert nccl == {**nccl, "outcome": "skipped", "reason": "needs a CUDA GPU"}
    assert report["tests"]["exit_code"] == 0
    rows = {r["name"]: r for r in report["rows"]}
    names = ["device-2", "dali-2", "torch-2", "device-2-compiled", "predict-2"]
    assert list(rows) == [*names, "device-2@vitpose_b", "device-2@hrnet_w32"]
    assert all(r["images_per_s"] > 0 and "error" not in r for r in rows.values())
    assert rows["device-2-compiled"]["compile"] is True
    assert rows["device-2"]["model"] == "resnet18 128x96"
    assert rows["device-2@vitpose_b"]["model"] == "vitpose_b 128x96"
    # each model's own FLOPs: at 128x96 ViTPose-B trains on ~6x ResNet-18's
    vit, resnet = rows["device-2@vitpose_b"], rows["device-2"]
    assert vit["training_gflops_per_image"] > 5 * resnet["training_gflops_per_image"]
    for row in (rows["dali-2"], rows["torch-2"]):  # end to end: the timed steps in one epoch
        assert row["epoch_starts_in_timed_steps"] == 0 and 0 <= row["data_wait"] <= 1
        assert row["samples"] >= (row["warmup_steps"] + row["steps"]) * row["batch"]
    assert resnet["training_gflops_per_image"] > 1  # resnet18 at 128x96
    predict = rows["predict-2"]  # the whole inference path: a detector, then the pose model
    assert predict["model"].startswith("ssdlite320_mobilenet_v3_large + resnet18")
    markdown = (out / "report.md").read_text()
    assert "| dali-2 |" in markdown and "needs a CUDA GPU" in markdown
    assert "| device-2@hrnet_w32 | hrnet_w32 128x96 |" in markdown


def test_a_row_that_raises_is_recorded_and_the_rest_of_the_report_written(
    gpu_check, monkeypatch, tmp_path
):
    real = gpu_check.measure

    def measure(cfg, row, *args):
        if row.source == "torch":
            raise RuntimeError("the loader broke")
        return real(cfg, row, *args)

    monkeypatch.setattr(gpu_check, "measure", measure)
    rows = "torch-2,device-2"
    code = gpu_check.main(["--cpu", "--quick", "--rows", rows, "--out", str(tmp_path)])
    assert code == 1
    report = json.loads((tmp_path / "report.json").read_text())
    failed, measured = report["rows"]
    assert failed["name"] == "torch-2" and failed["error"] == "RuntimeError: the loader broke"
    assert measured["name"] == "device-2" and measured["images_per_s"] > 0
    assert "the loader broke" in (tmp_path / "errors" / "torch-2.txt").read_text()
    assert "RuntimeError: the loader broke" in (tmp_path / "report.md").read_text()


def test_a_deadline_skips_the_rows_that_would_not_finish(gpu_check, tmp_path):
    args = ["--cpu", "--quick", "--rows", "device-2-compiled", "--budget-s", "5"]
    assert gpu_check.main([*args, "--out", str(tmp_path)]) == 0
    (row,) = json.loads((tmp_path / "report.json").read_text())["rows"]
    assert row["name"] == "device-2-compiled" and row["skipped"].endswith("takes ~150 s")


def test_an_unknown_row_is_refused_naming_it(gpu_check, capsys, tmp_path):
    with pytest.raises(SystemExit):
        gpu_check.main(["--cpu", "--rows", "device-2,gpu-9", "--out", str(tmp_path)])
    assert "'gpu-9' is not a row" in capsys.readouterr().err


def test_a_pytest_that_cannot_start_is_recorded_with_its_reason(gpu_check, monkeypatch, tmp_path):
    """As in an environment installed without the test extra."""
    broken = tmp_path / "site" / "pytest"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text("raise ImportError('pytest is not installed here')\n")
    monkeypatch.setenv("PYTHONPATH", str(broken.parent))
    args = ["--cpu", "--quick", "--rows", "tests", "--out", str(tmp_path / "out")]
    assert gpu_check.main(args) == 1
    tests = json.loads((tmp_path / "out" / "report.json").read_text())["tests"]
    assert "pytest is not installed here" in tests["error"]
    assert "pytest is not installed here" in (tmp_path / "out" / "report.md").read_text()


# A pytest plugin (loaded with -p before any test module) that makes the optional extras'
# modules unimportable, as in an environment installed without them.
HIDE_EXTRAS = """
import sys
for name in ("onnx", "onnxruntime", "onnxscript", "nvidia.dali", "wds2idx", "mkdocs"):
    sys.modules[name] = None  # import fails; importlib.util.find_spec returns None
"""


def collect(run_python, tmp_path, *args, **env) -> tuple[int, str]:
    """`pytest --collect-only ARGS` with the extras hidden; (exit code, output)."""
    (tmp_path / "hide_extras.py").write_text(HIDE_EXTRAS)
    env = {"PYTHONPATH": str(tmp_path), "CI": "", "POSESCALE_REQUIRE_ALL": "", **env}
    command = ["-m", "pytest", "-p", "hide_extras", "--collect-only", "-q", "-rs", *args]
    done = run_python([*command, "-p", "no:cacheprovider"], env=env)
    return done.returncode, done.stdout + done.stderr


def test_every_gpu_test_collects_without_the_optional_extras(run_python, tmp_path):
    with_extras = run_python(["-m", "pytest", "--collect-only", "-q", "-m", "gpu"])
    gpu_tests = [ln for ln in with_extras.stdout.splitlines() if "::" in ln]
    assert len(gpu_tests) >= 6, with_extras.stdout
    code, output = collect(run_python, tmp_path, "-m", "gpu")
    assert code == 0, output[-3000:]
    assert [ln for ln in output.splitlines() if "::" in ln] == gpu_tests
    code, output = collect(run_python, tmp_path)  # every module, not only the gpu tests
    assert code == 0, output[-3000:]
    assert "needs the export extra (pip install 'posescale[export]')" in output


def test_where_absence_fails_a_missing_extra_fails_collection_naming_it(
    gpu_check, run_python, tmp_path, monkeypatch
):
    code, output = collect(run_python, tmp_path, "-m", "gpu", POSESCALE_REQUIRE_ALL="1")
    assert code != 0 and "posescale[export]" in output
    # the GPU check's tests row reports the cause, not only pytest's count of errors
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    monkeypatch.setenv("PYTEST_ADDOPTS", "-p hide_extras")
    args = ["--cpu", "--quick", "--rows", "tests", "--out", str(tmp_path / "out")]
    assert gpu_check.main(args) == 1
    tests = json.loads((tmp_path / "out" / "report.json").read_text())["tests"]
    assert tests["error"].startswith("collecting tests/test_export.py: ")
    assert "posescale[export]" in tests["error"]
    assert tests["error"] in (tmp_path / "out" / "report.md").read_text()
