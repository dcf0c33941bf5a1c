"""benchmarks/gpu_check.py (`make gpu-check`) on a CPU: it says there is no GPU and exits 0,
and with --cpu it goes through every path the GPU run takes (shards made here, the device
batch, DALI and the torch backend end to end, FLOPs, the report files)."""

import json
import sys

import pytest
import torch


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_without_a_gpu_it_says_so_and_exits_0(run_python, tmp_path):
    done = run_python(["benchmarks/gpu_check.py", "--out", tmp_path / "out"])
    assert done.returncode == 0, done.stderr[-2000:]
    assert "no CUDA GPU here" in done.stdout
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_the_whole_check_runs_on_a_cpu_and_writes_its_report(run_python, tmp_path):
    out = tmp_path / "out"
    args = ["benchmarks/gpu_check.py", "--cpu", "--quick", "--skip-tests", "--out", out]
    done = run_python(args)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["machine"]["python"] == sys.version.split()[0]
    rows = report["throughput"]["rows"]
    assert [(r["source"], r["batch"]) for r in rows] == [("device", 2), ("dali", 2), ("torch", 2)]
    assert all(r["images_per_s"] > 0 for r in rows)
    assert all(0 <= r["data_wait"] <= 1 for r in rows if r["source"] != "device")
    assert report["throughput"]["training_gflops_per_image"] > 1  # resnet18 at 128x96
    assert "| dali | 2 | False |" in (out / "report.md").read_text()
