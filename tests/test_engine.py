import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import clean_env, tiny_overrides

from pose.config import ConfigError, load_config
from pose.data.codec import encode_heatmaps
from pose.engine.deepspeed_config import deepspeed_config, resolve_precision
from pose.engine.distributed import (
    DistributedSetupError,
    describe_environment,
    first_host,
    free_port,
)
from pose.engine.loss import joints_mse_loss
from pose.engine.schedule import lr_factor
from pose.tracking import read_metrics, wandb_mode

ROOT = Path(__file__).resolve().parents[1]


def run_train(args, env=None, timeout=600):
    env = clean_env(**(env or {}))
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


def final_weights(run_dir: Path) -> dict:
    tag = (run_dir / "checkpoints" / "latest").read_text().strip()
    path = run_dir / "checkpoints" / tag / "mp_rank_00_model_states.pt"
    return torch.load(path, map_location="cpu", weights_only=False)["module"]


@pytest.mark.slow
def test_torchrun_two_ranks_zero1_fp32_then_bf16(shards, tmp_path):
    run = tmp_path / "ddp"
    port = str(free_port())  # torchrun's --master_port 0 hangs DeepSpeed's CPU rendezvous
    args = [
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        port,
        "launch/train.py",
        "--config",
        "configs/demo.yaml",
        *tiny_overrides(
            shards, run, **{"train.zero_stage": 1, "train.max_steps": 24, "train.lr": 3e-3}
        ),
    ]
    done = run_train(args)
    assert done.returncode == 0, done.stderr[-3000:]
    records = [r for r in read_metrics(run) if r["split"] == "train"]
    assert records[-1]["step"] == 24
    first, last = records[0]["loss"], sum(r["loss"] for r in records[-3:]) / 3
    assert last < first, (first, last)
    assert records[-1]["images_per_s"] == pytest.approx(2 * records[-1]["images_per_s_per_device"])
    # bf16 autocast: a few steps continue the same run (resumes from step 24), finite losses
    bf16 = run_train([*args[:-1], "train.max_steps=28", "train.precision=bf16"])
    assert bf16.returncode == 0, bf16.stderr[-3000:]
    tail = [r for r in read_metrics(run) if r["split"] == "train"][-2:]
    assert tail[-1]["step"] == 28 and all(torch.isfinite(torch.tensor(r["loss"])) for r in tail)


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_weights(shards, tmp_path):
    base = ["launch/train.py", "--config", "configs/demo.yaml"]
    steps = {"train.max_steps": 12}
    whole = run_train([*base, *tiny_overrides(shards, tmp_path / "whole", **steps)])
    assert whole.returncode == 0, whole.stderr[-3000:]
    run = tmp_path / "killed"
    env = clean_env()
    command = [sys.executable, *base, *tiny_overrides(shards, run, **steps)]
    proc = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    latest = run / "checkpoints" / "latest"
    deadline = time.time() + 300
    while time.time() < deadline and not (latest.is_file() and "000000008" in latest.read_text()):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert "000000008" in latest.read_text()  # killed after step 8, mid-epoch
    resumed = run_train([*base, *tiny_overrides(shards, run, **steps)])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = final_weights(tmp_path / "whole"), final_weights(run)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key  # bitwise on CPU
    steps = [r["step"] for r in read_metrics(run) if r["split"] == "train"]
    assert steps[-1] == 12 and steps.count(2) == 1  # appended after the resume, not truncated


def test_gradient_accumulation_matches_a_larger_batch(shards, tmp_path):
    from pose.engine.deepspeed_config import build_engine
    from pose.engine.distributed import init_distributed
    from pose.engine.train import train_step
    from pose.models import build_model

    results = []
    batch = None
    for accum, micro in ((1, 8), (2, 4)):
        cfg = load_config(
            "configs/demo.yaml",
            tiny_overrides(
                shards, tmp_path / "x", **{"train.batch_size": micro, "train.grad_accum": accum}
            ),
        )
        init_distributed(cfg.launch)
        torch.manual_seed(0)
        model = build_model(cfg.model, 17)
        for m in model.modules():  # batch statistics differ between 4 and 8 samples: freeze BN
            if isinstance(m, torch.nn.BatchNorm2d):
                m.eval()
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        engine = build_engine(model, opt, None, cfg, 1, "fp32")
        if batch is None:
            from pose.data.loader import build_loader

            batch = next(iter(build_loader(cfg.data, "train", 8).epoch(0)))
        for i in range(accum):
            part = {k: v[i * micro : (i + 1) * micro] for k, v in batch.items()}
            train_step(engine, part, cfg)
        assert engine.global_steps == 1
        results.append({k: v.clone() for k, v in engine.module.state_dict().items()})
    for key in results[0]:
        torch.testing.assert_close(results[0][key], results[1][key], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("clip", [0.0, 0.002])
def test_engine_step_equals_a_plain_torch_step_and_clips_only_when_asked(shards, tmp_path, clip):
    """DeepSpeed clips gradients at norm 1.0 unless told otherwise; `train.grad_clip: 0` must
    mean no clipping (the reference recipe has none), and a set value must clip as torch does."""
    from pose.engine.deepspeed_config import build_engine
    from pose.engine.distributed import init_distributed
    from pose.engine.train import train_step
    from pose.models import build_model

    cfg = load_config(
        "configs/demo.yaml", tiny_overrides(shards, tmp_path / "x", **{"train.grad_clip": clip})
    )
    init_distributed(cfg.launch)
    from pose.data.loader import build_loader

    batch = next(iter(build_loader(cfg.data, "train", 8).epoch(0)))
    weights = []
    for use_engine in (False, True):
        torch.manual_seed(0)
        model = build_model(cfg.model, 17)
        opt = torch.optim.SGD(model.parameters(), lr=10.0)
        if use_engine:
            engine = build_engine(model, opt, None, cfg, 1, "fp32")
            assert engine.gradient_clipping() == clip
            train_step(engine, batch, cfg)
        else:
            data = cfg.data
            targets, target_weights = encode_heatmaps(
                batch["keypoints"], data.image_size, data.heatmap_size, data.sigma
            )
            joints_mse_loss(model(batch["image"]), targets, target_weights).backward()
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip or float("inf"))
            assert clip == 0 or norm > 10 * clip, "the gradients are large enough to be clipped"
            opt.step()
        weights.append({k: v.clone() for k, v in model.state_dict().items()})
    for key in weights[0]:
        torch.testing.assert_close(weights[1][key], weights[0][key], rtol=1e-5, atol=1e-7)


def test_config_errors_are_rejected_clearly():
    with pytest.raises(ConfigError, match=r"train\.zero_stage.*0, 1, 2"):
        load_config(None, ["train.zero_stage=3"])
    with pytest.raises(ConfigError, match=r"train\.optimizer.*'adam', 'adamw'"):
        load_config(None, ["train.optimizer=sgd"])
    with pytest.raises(ConfigError, match="fp16 needs a GPU"):
        resolve_precision("fp16", torch.device("cpu"))
    with pytest.raises(ConfigError, match="zero_stage=0"):
        deepspeed_config(
            load_config(None, ["train.precision=fp16", "train.zero_stage=1"]), 1, "fp16"
        )
    assert resolve_precision("auto", torch.device("cpu")) == "fp32"
    ds = deepspeed_config(
        load_config(None, ["train.grad_accum=4", "train.grad_clip=1.0"]), 2, "bf16"
    )
    assert ds["train_batch_size"] == 32 * 4 * 2 and ds["gradient_clipping"] == 1.0
    assert ds["torch_autocast"]["dtype"] == "bfloat16" and "bf16" not in ds


def test_lr_schedule_decays_on_the_right_epoch():
    cfg = load_config(None, ["train.warmup_steps=10"]).train  # multistep 90/120 of 140
    factor = lr_factor(cfg, steps_per_epoch=100)
    assert factor(0) == pytest.approx(0.1) and factor(9) == 1.0
    assert factor(90 * 100 - 1) == 1.0 and factor(90 * 100) == pytest.approx(0.1)
    assert factor(120 * 100 - 1) == pytest.approx(0.1) and factor(120 * 100) == pytest.approx(0.01)
    cosine = lr_factor(
        load_config(
            None, ["train.schedule=cosine", "train.warmup_steps=0", "train.epochs=2"]
        ).train,
        10,
    )
    assert cosine(0) == 1.0 and cosine(10) == pytest.approx(0.5) and cosine(20) == pytest.approx(0)


def test_joints_mse_loss_matches_the_reference():
    torch.manual_seed(0)
    pred, target = torch.randn(3, 17, 8, 6), torch.rand(3, 17, 8, 6)
    weight = (torch.rand(3, 17) > 0.3).float()
    mse = torch.nn.MSELoss()
    reference = (
        sum(
            0.5
            * mse(pred[:, j] * weight[:, j, None, None], target[:, j] * weight[:, j, None, None])
            for j in range(17)
        )
        / 17
    )
    torch.testing.assert_close(joints_mse_loss(pred, target, weight), reference)
    per = 0.5 * ((pred - target) * weight[..., None, None]).pow(2).mean((2, 3))
    ohkm = torch.stack([per[i].topk(8).values.sum() / 8 for i in range(3)]).mean()
    torch.testing.assert_close(joints_mse_loss(pred, target, weight, ohkm_topk=8), ohkm)


def test_distributed_environment_from_torchrun_slurm_or_nothing():
    torchrun = {
        "RANK": "1",
        "WORLD_SIZE": "4",
        "LOCAL_RANK": "1",
        "MASTER_ADDR": "h",
        "MASTER_PORT": "29500",
    }
    assert describe_environment(torchrun)["SOURCE"] == "torchrun"
    slurm = {
        "SLURM_PROCID": "5",
        "SLURM_NTASKS": "8",
        "SLURM_LOCALID": "1",
        "SLURM_JOB_NODELIST": "gpu[03-04,7]",
        "SLURM_JOB_ID": "1234",
    }
    found = describe_environment(slurm)
    assert (found["RANK"], found["WORLD_SIZE"], found["LOCAL_RANK"]) == ("5", "8", "1")
    assert found["MASTER_ADDR"] == "gpu03" and found["MASTER_PORT"] == str(20000 + 1234)
    assert first_host("node7") == "node7"
    single = describe_environment({})
    assert (single["RANK"], single["WORLD_SIZE"], single["SOURCE"]) == ("0", "1", "single")
    with pytest.raises(DistributedSetupError, match=r"half set.*MASTER_ADDR, MASTER_PORT missing"):
        describe_environment({"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0"})


def test_nan_loss_stops_naming_the_step(shards, tmp_path):
    extra = {"train.lr": 1e30, "train.max_steps": 6}
    done = run_train(
        [
            "launch/train.py",
            "--config",
            "configs/demo.yaml",
            *tiny_overrides(shards, tmp_path / "nan", **extra),
        ]
    )
    assert done.returncode == 1, done.stderr[-2000:]
    assert "loss is not finite at step" in done.stderr


def test_wandb_offline_writes_a_run_and_metrics_have_the_keys(shards, tmp_path):
    run = tmp_path / "wb"
    extra = {"train.max_steps": 4, "log.wandb": "offline"}
    done = run_train(
        ["launch/train.py", "--config", "configs/demo.yaml", *tiny_overrides(shards, run, **extra)],
        env={"WANDB_API_KEY": ""},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert list((run / "wandb").glob("offline-run-*"))
    record = read_metrics(run)[-1]
    for key in ("step", "epoch", "split", "loss", "lr", "images_per_s", "data_wait", "step_time"):
        assert key in record
    assert json.loads(json.dumps(record)) == record
    assert wandb_mode("auto", {}) in ("offline", "online")
    assert wandb_mode("auto", {"WANDB_API_KEY": "x"}) == "online"
    assert wandb_mode("auto", {"NETRC": str(tmp_path / "none")}) == "offline"


def test_export_a_run_to_a_plain_state_dict_and_torchscript(shards, tmp_path):
    from launch.export import main as export_main
    from pose.models import build_model
    from pose.models.weights import load_model_weights

    run = tmp_path / "run"
    done = run_train(
        [
            "launch/train.py",
            "--config",
            "configs/demo.yaml",
            *tiny_overrides(shards, run, **{"train.max_steps": 2}),
        ]
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert export_main(["--checkpoint", str(run), "--out", str(tmp_path / "export")]) == 0
    cfg = load_config(run / "config.yaml")
    model = build_model(cfg.model, 17).eval()
    load_model_weights(model, tmp_path / "export" / "model_state_dict.pth")
    scripted = torch.jit.load(str(tmp_path / "export" / "model_torchscript.pt"))
    x = torch.randn(2, 3, 96, 64)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), model(x))


def test_fp16_overflow_steps_are_counted_not_fatal():
    """fp16 needs a GPU; the counting is checked with a stand-in for DeepSpeed's engine whose
    grad scaler halves its scale on an overflowing step, as torch's GradScaler does."""
    from types import SimpleNamespace

    from pose.engine.train import _Window, train_step

    class FakeEngine:
        def __init__(self):
            self.net = torch.nn.Conv2d(3, 17, 1)
            self.torch_autocast_z0_gradscaler = SimpleNamespace(_scale=torch.tensor(65536.0))
            self.overflow = False

        def __call__(self, x):
            return self.net(x)[..., ::4, ::4]

        def backward(self, loss):
            pass

        def step(self):
            if self.overflow:
                self.torch_autocast_z0_gradscaler._scale = (
                    self.torch_autocast_z0_gradscaler._scale / 2
                )

    cfg = load_config(None, ["data.image_size=[64,32]"])
    batch = {"image": torch.randn(2, 3, 64, 32), "keypoints": torch.rand(2, 17, 3) * 30}
    engine = FakeEngine()
    _, skipped = train_step(engine, batch, cfg)
    assert skipped.item() == 0
    engine.overflow = True
    _, skipped = train_step(engine, batch, cfg)
    assert skipped.item() == 1
    window = _Window(torch.device("cpu"))
    window.add(torch.tensor(float("inf")), torch.tensor(1.0), 2, 5)  # skipped: counted
    window.add(torch.tensor(0.5), torch.tensor(0.0), 2, 6)
    env = SimpleNamespace(world_size=1, device=torch.device("cpu"))
    optimizer = SimpleNamespace(param_groups=[{"lr": 1e-3}])
    state = SimpleNamespace(global_step=7, epoch=0)
    record = window.flush(state, optimizer, env)
    assert record["skipped_steps"] == 1
    window.add(torch.tensor(float("nan")), torch.tensor(0.0), 2, 8)  # not skipped: fatal
    from pose.engine.train import TrainingError

    with pytest.raises(TrainingError, match="not finite at step 9"):
        window.flush(state, optimizer, env)


ALLOCATOR_PROBE = """
import ctypes, sys, torch
from pose.config import LaunchConfig
from pose.engine.distributed import init_distributed
init_distributed(LaunchConfig(keep_freed_memory=sys.argv[1] == "true"))
class Info(ctypes.Structure):  # glibc's struct mallinfo2
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
mallinfo2 = ctypes.CDLL(None).mallinfo2
mallinfo2.restype = Info
before = mallinfo2()
step = torch.ones(5 << 20)  # a 20 MB tensor of one training step
live = mallinfo2()
del step
after = mallinfo2()
print((live.hblkhd - before.hblkhd) >> 20, (after.fordblks - before.fordblks) >> 20)
"""


@pytest.mark.parametrize("keep", ["true", "false"])
def test_freed_memory_is_kept_for_the_next_step(keep):
    out = subprocess.run(
        [sys.executable, "-c", ALLOCATOR_PROBE, keep],
        capture_output=True,
        text=True,
        env=clean_env(),
        check=True,
    ).stdout
    mapped_mb, kept_mb = (int(v) for v in out.split()[-2:])
    if keep == "true":  # from the heap, and still there for the next step once freed
        assert mapped_mb == 0 and kept_mb >= 19
    else:  # glibc's default: fresh pages mapped for it, returned when freed
        assert mapped_mb >= 19 and kept_mb < 5
