"""Run logging (pose/tracking.py): metrics.jsonl and wandb, offline without credentials."""

import json

from pose.tracking import read_metrics, wandb_mode


def test_wandb_offline_writes_a_run_and_metrics_have_the_keys(
    shards, tmp_path, tiny_overrides, run_python
):
    run = tmp_path / "wb"
    extra = {"train.max_steps": 4, "log.wandb": "offline"}
    args = [
        "launch/train.py",
        "--config",
        "configs/demo.yaml",
        *tiny_overrides(shards, run, **extra),
    ]
    done = run_python(args, env={"WANDB_API_KEY": ""})
    assert done.returncode == 0, done.stderr[-3000:]
    assert list((run / "wandb").glob("offline-run-*"))
    assert (run / "wandb_id.txt").read_text().strip() in str(list((run / "wandb").glob("*")))
    record = read_metrics(run)[-1]
    for key in ("step", "epoch", "split", "loss", "lr", "images_per_s", "data_wait", "step_time"):
        assert key in record
    assert json.loads(json.dumps(record)) == record


def test_wandb_mode_is_online_only_with_credentials(tmp_path):
    assert wandb_mode("auto", {"NETRC": str(tmp_path / "none")}) == "offline"
    assert wandb_mode("auto", {"WANDB_API_KEY": "x"}) == "online"
    netrc = tmp_path / "netrc"
    netrc.write_text("machine api.wandb.ai login user password key\n")
    assert wandb_mode("auto", {"NETRC": str(netrc)}) == "online"
    assert wandb_mode("off", {"WANDB_API_KEY": "x"}) == "off"
