"""The scaling model of benchmarks/scaling.py: its formulas on values worked by hand."""

import importlib.util
import itertools
from pathlib import Path

import pytest

spec = importlib.util.spec_from_file_location(
    "scaling", Path(__file__).resolve().parents[1] / "benchmarks" / "scaling.py"
)
scaling = importlib.util.module_from_spec(spec)
spec.loader.exec_module(scaling)


def test_ring_allreduce_moves_two_w_minus_one_over_w_of_the_buffer():
    # 100 MB over 4 ranks at 10 GB/s: 2 * 3/4 * 0.01 s = 15 ms, plus 6 hops of 1 ms
    assert scaling.ring_allreduce_s(100e6, 4, 10e9, 1e-3) == pytest.approx(0.015 + 0.006)
    assert scaling.ring_allreduce_s(100e6, 1, 10e9, 1e-3) == 0.0


def test_a_step_hides_the_allreduce_behind_the_backward_pass_up_to_its_length():
    assert scaling.step_s(0.030, 2 / 3, 0.015, overlap=True) == pytest.approx(0.030)
    assert scaling.step_s(0.030, 2 / 3, 0.025, overlap=True) == pytest.approx(0.035)
    assert scaling.step_s(0.030, 2 / 3, 0.015, overlap=False, data_s=0.002) == pytest.approx(0.047)


def test_the_large_scale_table_loses_efficiency_only_where_the_ring_outgrows_the_backward():
    report = scaling.model_table(bytes_per_image=60e3)
    # both costs from the project's one multiply-add count (pose.models.summary)
    assert report["pose_gmacs"] == pytest.approx(5.426, abs=0.001)
    assert report["resnet50_224_gmacs"] == pytest.approx(4.089, abs=0.001)
    table = report["rows"]
    assert [r["gpus"] for r in table] == [8, 16, 32, 64, 128, 256, 512]
    compute_ms = 32 / report["per_gpu_images_s"] * 1e3
    backward_ms = 2 / 3 * compute_ms
    for row in table:  # what the all-reduce adds is only what outlasts the backward pass
        exposed = max(0.0, row["allreduce_ms"] - backward_ms)
        assert row["efficiency"] == pytest.approx(compute_ms / (compute_ms + exposed))
    efficiency = [r["efficiency"] for r in table]
    assert efficiency[0] == 1.0 and table[0]["allreduce_ms"] < backward_ms  # NVLink: hidden
    assert all(a > b for a, b in itertools.pairwise(efficiency)) and efficiency[-1] > 0.4
    assert all(a["read_mb_s"] < b["read_mb_s"] for a, b in itertools.pairwise(table))
    first = table[0]
    assert first["read_mb_s"] == pytest.approx(first["images_s"] * 60e3 / 1e6)
