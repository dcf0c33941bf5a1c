"""Sweep files: expansion into runs, their names and overrides, errors before submitting, and
the sbatch lines a dry run prints (pose/sweep/spec.py, the sbatch preview of submit.py)."""

from pathlib import Path

import pytest
import yaml

from pose.config import ConfigError
from pose.folders import ExportFolder
from pose.sweep.spec import load_sweep, plan_runs, run_config


def test_sweep_file_expands_grid_times_list_with_names_and_tags(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "base": "configs/demo.yaml",
                "overrides": ["train.epochs=2"],
                "grid": {"model.attention": ["none", "partwise"], "seed": [0, 1]},
                "runs": [["optimizer.lr=0.001"], ["optimizer.lr=0.0005"]],
            }
        )
    )
    sweep = load_sweep(path, ["train.batch_size=4"])
    assert sweep.name == "s" and len(sweep.runs) == 8
    names = [r.name for r in sweep.runs]
    assert names[0] == "attention-none_seed-0_lr-0.001" and len(set(names)) == 8
    assert names[-1] == "attention-partwise_seed-1_lr-0.0005"
    run = sweep.runs[-1]
    assert run.overrides[:2] == ("train.epochs=2", "train.batch_size=4")
    cfg = run_config(sweep, run, tmp_path / "runs" / run.name)
    got = (cfg.model.attention, cfg.seed, cfg.optimizer.lr, cfg.train.epochs)
    assert got == ("partwise", 1, 5e-4, 2)
    assert cfg.log.group == "s" and cfg.log.name == f"s/{run.name}"
    assert cfg.log.tags == ["attention=partwise", "seed=1", "lr=0.0005"]
    assert cfg.run.dir == str(tmp_path / "runs" / run.name)


def test_one_key_that_differs_names_runs_by_it_alone():
    from pose.sweep.spec import SweepFile

    runs = plan_runs(SweepFile(base="x", grid={"model.backbone": ["resnet50"], "seed": [0, 1, 2]}))
    assert [r.name for r in runs] == ["seed-0", "seed-1", "seed-2"]
    assert runs[0].varying == {"seed": 0}


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"base": "configs/demo.yaml", "slurm": {"gpus": 2}}, "unknown config key 'slurm.gpus'"),
        ({"base": "configs/demo.yaml", "slurm": {"nodes": 0}}, "'slurm.nodes': 0 must be positive"),
        (
            {"base": "configs/demo.yaml", "grid": {"model.attention": ["none", "holstic"]}},
            "run 'attention-holstic': config key 'model.attention': 'holstic' is not allowed",
        ),
        (
            {"base": "configs/demo.yaml", "grid": {"optimizer.lr": []}},
            "'grid.optimizer.lr': needs at least",
        ),
        ({"base": "configs/nope.yaml"}, "base config 'configs/nope.yaml' not found"),
        ({"grid": {"seed": [0]}}, "'base': name the base config"),
    ],
)
def test_bad_sweep_files_fail_before_submitting_naming_the_key(tmp_path, spec, message):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_sweep(path)


def test_dry_run_prints_runs_and_the_sbatch_array_without_slurm(tmp_path, sweep_cli):
    path = tmp_path / "gpu.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "base": "configs/coco_res50_256x192.yaml",
                "grid": {"model.attention": ["none", "holistic", "partwise"], "seed": [0, 1]},
                "slurm": {
                    "partition": "gpu",
                    "account": "pose",
                    "nodes": 2,
                    "gpus_per_node": 4,
                    "cpus_per_task": 8,
                    "mem_gb": 200,
                    "time_min": 600,
                    "max_running": 2,
                    "sbatch": {"exclusive": True},
                    "setup": ["module load cuda"],
                },
            }
        )
    )
    env = {"PATH": "/usr/local/bin:/bin"}  # no srun here, whatever this machine has
    done = sweep_cli(path, "--dry-run", "--out", tmp_path / "sw", env=env)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "6 runs" in out and "attention-partwise_seed-1:" in out
    for line in (
        "--array=0-5%2",
        "--partition=gpu",
        "--account=pose",
        "--nodes=2",
        "--ntasks-per-node=4",
        "--gpus-per-node=4",
        "--cpus-per-task=8",
        "--mem=200GB",
        "--time=600",
        "--signal=USR2@120",
        "--requeue",
        "--exclusive",
    ):
        assert f"#SBATCH {line}\n" in out, line
    assert "module load cuda" in out and "submitit.core._submit" in out
    assert not (tmp_path / "sw").exists()


def test_no_cluster_answering_is_said_and_leaves_nothing(tmp_path, sweep_cli):
    """sbatch and srun are installed but the controller does not answer (or sbatch fails):
    a clear error, and no half-made sweep folder."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    refused = "Batch job submission failed: Unable to contact slurm controller"
    scripts = {
        "srun": "exit 1",
        "sbatch": f"echo 'sbatch: error: {refused}' >&2; exit 1",
        "sinfo": "echo 'slurm_load_partitions: Unable to contact slurm controller' >&2; exit 1",
    }
    for name, script in scripts.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{script}\n")
        (bin_dir / name).chmod(0o755)
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"base": "configs/demo.yaml", "grid": {"seed": [0, 1]}}))
    env = {"PATH": f"{bin_dir}:/usr/local/bin:/usr/bin:/bin"}
    done = sweep_cli(path, "--out", tmp_path / "sw", env=env)
    assert done.returncode == 2, done.stderr
    assert "no Slurm cluster answers (sinfo: slurm_load_partitions: Unable to contact" in (
        done.stderr
    )
    assert "Traceback" not in done.stderr and not (tmp_path / "sw").exists()
    (bin_dir / "sinfo").write_text("#!/bin/sh\necho debug\n")  # answers, but sbatch fails
    done = sweep_cli(path, "--out", tmp_path / "sw", env=env)
    assert done.returncode == 2, done.stderr
    assert "submitting the sweep failed" in done.stderr and "Unable to contact" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "sw").exists()


def test_the_sweep_demo_pairs_three_seeds_per_variant_and_needs_the_demo_export(
    tmp_path, monkeypatch
):
    sweep_file = (Path(__file__).parents[1] / "configs/sweeps/demo.yaml").resolve()
    monkeypatch.chdir(tmp_path)  # the weights path is relative to where the sweep is run
    with pytest.raises(ConfigError, match=r"model\.pretrained.*runs/demo/export"):
        load_sweep(sweep_file)
    weights = ExportFolder(tmp_path / "runs/demo/export").weights
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"")
    sweep = load_sweep(sweep_file)
    seeds = {}
    for run in sweep.runs:
        cfg = run_config(sweep, run, tmp_path / "runs" / run.name)
        seeds.setdefault(cfg.model.attention, []).append(cfg.seed)
        assert cfg.model.pretrained == "runs/demo/export"  # an export folder, as --checkpoint
        assert cfg.train.budget_images > 0 and cfg.train.budget_minutes == 0
    assert seeds == {"none": [0, 1, 2], "holistic": [0, 1, 2], "partwise": [0, 1, 2]}
