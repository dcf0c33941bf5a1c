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


def test_the_best_ap_so_far_is_a_wandb_summary_key(tmp_path):
    """wandb's run table sorts runs by a summary key: each evaluation keeps the best AP."""
    from pose.config import LogConfig
    from pose.folders import RunFolder
    from pose.tracking import Tracker, ValRecord, read_run_metrics

    class FakeRun:
        def __init__(self):
            self.summary, self.logged = {}, []

        def log(self, values, step):
            self.logged.append((step, values))

    tracker = Tracker(LogConfig(wandb="off"), RunFolder(tmp_path), enabled=True)
    tracker.run = FakeRun()
    for step, ap in ((10, 0.3), (20, 0.5), (30, 0.4)):
        tracker.log(ValRecord(step, step // 10, {"AP": ap, "AP50": 0.9}))
    assert tracker.run.summary["val/best_AP"] == 0.5
    assert tracker.run.logged[1] == (20, {"val/epoch": 2, "val/AP": 0.5, "val/AP50": 0.9})
    assert [r.ap for r in read_run_metrics(tmp_path).val] == [0.3, 0.5, 0.4]
