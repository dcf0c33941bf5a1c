"""The scale benchmark's quick mode (what `make scale-check` runs): every stage runs at small N,
sharding loses no instance, and the optional scorer agrees with pycocotools."""

import pytest

from benchmarks import scale


@pytest.mark.slow
def test_quick_scale_benchmark_runs_every_stage(tmp_path):
    result = scale.main(["--quick", "--workers", "1", "--json", str(tmp_path / "scale.json")])
    assert [row["instances"] for row in result["shard"]] == [1000, 4000]
    assert [row["samples"] for row in result["shard"]] == [1000, 4000]  # none dropped
    assert all(row["peak_mb"] > 0 and row["seconds"] > 0 for row in result["shard"])
    assert all(row["seconds_to_first_batch"] > 0 for row in result["loader"])
    for row in result["eval"]:
        assert row["predictions"] in (2000, 8000)
        assert 0.0 < row["kept"] <= row["predictions"]
        assert 0.05 < row["AP"] < 1.0  # noisy predictions around real people: neither 0 nor 1
        if "AP_faster_coco_eval" in row:
            assert row["AP_faster_coco_eval"] == pytest.approx(row["AP"], abs=1e-6)
    assert set(result["exponents"]) >= {"shard_seconds", "shard_peak_mb", "eval_seconds"}
    assert result["exponents"]["shard_seconds"] is not None
    assert (tmp_path / "scale.json").is_file()
