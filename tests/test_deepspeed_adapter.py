"""The DeepSpeed adapter (pose/engine/deepspeed_adapter.py): the generated config, precision,
and an engine step against a plain torch step (clipping, accumulation, fp16 overflows)."""

from types import SimpleNamespace

import pytest
import torch

from pose.config import ConfigError, load_config
from pose.data.backends import build_loader
from pose.data.codec import encode_heatmaps
from pose.data.loader import LoaderSpec
from pose.distributed import init_distributed
from pose.engine.deepspeed_adapter import (
    TrainEngine,
    build_engine,
    deepspeed_config,
    resolve_precision,
)
from pose.engine.errors import TrainingError
from pose.engine.loss import joints_mse_loss
from pose.engine.step_metrics import StepMetrics
from pose.engine.trainer import train_step
from pose.models import build_model


def test_precision_and_config_errors_are_clear():
    with pytest.raises(ConfigError, match="fp16 needs a GPU"):
        resolve_precision("fp16", torch.device("cpu"))
    with pytest.raises(ConfigError, match="zero_stage=0"):
        cfg = load_config(None, ["engine.precision=fp16", "engine.zero_stage=1"])
        deepspeed_config(cfg.train, cfg.engine, 0.0, 1, "fp16")
    assert resolve_precision("auto", torch.device("cpu")) == "fp32"
    cfg = load_config(None, ["train.grad_accum=4", "optimizer.grad_clip=1.0"])
    ds = deepspeed_config(cfg.train, cfg.engine, cfg.optimizer.grad_clip, 2, "bf16")
    assert ds["train_batch_size"] == 32 * 4 * 2 and ds["gradient_clipping"] == 1.0
    assert ds["torch_autocast"]["dtype"] == "bfloat16" and "bf16" not in ds


@pytest.fixture()
def tiny_cfg(shards, tmp_path, tiny_overrides):
    def make(**extra):
        cfg = load_config("configs/demo.yaml", tiny_overrides(shards, tmp_path / "x", **extra))
        init_distributed(cfg.launch)
        return cfg

    return make


def first_batch(cfg, batch_size: int = 8) -> dict:
    batches = build_loader(LoaderSpec(cfg.data, "train", batch_size)).epoch(0)
    batch = next(batches)
    batches.close()
    return batch


def test_gradient_accumulation_matches_a_larger_batch(tiny_cfg):
    results, batch = [], None
    for accum, micro in ((1, 8), (2, 4)):
        cfg = tiny_cfg(**{"train.batch_size": micro, "train.grad_accum": accum})
        torch.manual_seed(0)
        model = build_model(cfg.model, 17)
        for m in model.modules():  # batch statistics differ between 4 and 8 samples: freeze BN
            if isinstance(m, torch.nn.BatchNorm2d):
                m.eval()
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        engine = build_engine(model, opt, None, cfg.train, cfg.engine, 0.0, 1, "fp32")
        batch = batch or first_batch(cfg)
        for i in range(accum):
            part = {k: v[i * micro : (i + 1) * micro] for k, v in batch.items()}
            train_step(engine, part, cfg.data, cfg.loss)
        assert engine.optimizer_steps == 1
        results.append({k: v.clone() for k, v in engine.model.state_dict().items()})
    for key in results[0]:
        torch.testing.assert_close(results[0][key], results[1][key], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("clip", [0.0, 0.002])
def test_engine_step_equals_a_plain_torch_step_and_clips_only_when_asked(tiny_cfg, clip):
    """DeepSpeed clips gradients at norm 1.0 unless told otherwise; `optimizer.grad_clip: 0` must
    mean no clipping (the reference recipe has none), and a set value must clip as torch does."""
    cfg = tiny_cfg(**{"optimizer.grad_clip": clip})
    batch = first_batch(cfg)
    weights = []
    for use_engine in (False, True):
        torch.manual_seed(0)
        model = build_model(cfg.model, 17)
        opt = torch.optim.SGD(model.parameters(), lr=10.0)
        if use_engine:
            engine = build_engine(model, opt, None, cfg.train, cfg.engine, clip, 1, "fp32")
            assert engine.gradient_clipping == clip
            train_step(engine, batch, cfg.data, cfg.loss)
        else:
            heatmaps = model(batch["image"])
            targets, target_weights = encode_heatmaps(
                batch["keypoints"], cfg.data.image_size, heatmaps.shape[-2:], cfg.data.sigma
            )
            joints_mse_loss(heatmaps, targets, target_weights).backward()
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip or float("inf"))
            assert clip == 0 or norm > 10 * clip, "the gradients are large enough to be clipped"
            opt.step()
        weights.append({k: v.clone() for k, v in model.state_dict().items()})
    for key in weights[0]:
        torch.testing.assert_close(weights[1][key], weights[0][key], rtol=1e-5, atol=1e-7)


class FakeDeepSpeed:
    """A stand-in for DeepSpeed's engine whose fp16 grad scaler halves its scale on an
    overflowing step, as torch's GradScaler does (fp16 needs a GPU)."""

    def __init__(self):
        self.net = self.module = torch.nn.Conv2d(3, 17, 1)
        self.torch_autocast_z0_gradscaler = SimpleNamespace(_scale=torch.tensor(65536.0))
        self.overflow = False

    def __call__(self, x):
        return self.net(x)[..., ::4, ::4]

    def backward(self, loss):
        pass

    def step(self):
        if self.overflow:
            scaler = self.torch_autocast_z0_gradscaler
            scaler._scale = scaler._scale / 2


def test_fp16_overflow_steps_are_counted_not_fatal():
    cfg = load_config(None, ["data.image_size=[64,32]"])
    batch = {"image": torch.randn(2, 3, 64, 32), "keypoints": torch.rand(2, 17, 3) * 30}
    fake = FakeDeepSpeed()
    engine = TrainEngine(fake)
    _, skipped = train_step(engine, batch, cfg.data, cfg.loss)
    assert skipped.item() == 0
    fake.overflow = True
    _, skipped = train_step(engine, batch, cfg.data, cfg.loss)
    assert skipped.item() == 1
    env = SimpleNamespace(world_size=1, device=torch.device("cpu"))
    metrics = StepMetrics(env)
    metrics.add(torch.tensor(float("inf")), torch.tensor(1.0), 2, 6)  # skipped: counted
    metrics.add(torch.tensor(0.5), torch.tensor(0.0), 2, 7)
    assert metrics.flush(7, 0, 1e-3).skipped_steps == 1
    metrics.add(torch.tensor(float("nan")), torch.tensor(0.0), 2, 9)  # not skipped: fatal
    with pytest.raises(TrainingError, match="not finite at step 9"):
        metrics.flush(9, 0, 1e-3)


def _overlap_ranks(rank: int, port: int, overlap: bool, queue) -> None:
    """One of two gloo ranks training a small network two optimizer steps of two micro-batches
    each, its own data per rank; reports the gradients after each backward pass, whether
    DeepSpeed's own (after-backward) all-reduce ran, and the final weights."""
    import os

    import torch
    import torch.distributed as dist

    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2"
    )
    os.environ["LOCAL_RANK"] = str(rank)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 3)
    )
    overrides = ["train.grad_accum=2", "train.batch_size=4", f"engine.overlap_comm={overlap}"]
    cfg = load_config(None, [*overrides, "engine.bucket_mb=1"])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    engine = build_engine(
        model, optimizer, None, cfg.train, cfg.engine, 0.0, 2, "fp32", collective_timeout_s=60
    )
    ran = []
    inner = engine._engine
    original = inner.allreduce_gradients
    inner.allreduce_gradients = lambda *a, **k: (ran.append(1), original(*a, **k))[1]
    torch.manual_seed(10 + rank)
    grads = []
    for _ in range(4):
        loss = engine(torch.randn(4, 3, 8, 8)).square().mean()
        engine.backward(loss)
        grads.append([p.grad.clone().tolist() for p in model.parameters()])
        engine.step()
    weights = [p.detach().tolist() for p in model.parameters()]
    queue.put((rank, grads, bool(ran), weights, type(model).__name__))
    dist.destroy_process_group()


def test_the_overlapped_reduction_averages_during_backward_and_only_at_boundaries():
    """Two ranks, gradient accumulation 2: with overlap the gradients are averaged during the
    backward pass of each boundary micro-batch (DeepSpeed's after-backward all-reduce never
    runs) and kept local in between; the weights are bit for bit those without overlap."""
    import torch.multiprocessing as mp

    from pose.distributed import free_port

    context = mp.get_context("spawn")
    results = {}
    for overlap in (True, False):
        queue = context.Queue()
        port = free_port()
        procs = [
            context.Process(target=_overlap_ranks, args=(r, port, overlap, queue)) for r in (0, 1)
        ]
        for p in procs:
            p.start()
        got = dict((r, rest) for r, *rest in (queue.get(timeout=180) for _ in procs))
        for p in procs:
            p.join(timeout=60)
        results[overlap] = got
    for overlap, got in results.items():
        (grads0, ran0, _, cls0), (grads1, ran1, _, _) = got[0], got[1]
        assert ran0 == ran1 == (not overlap)
        assert (cls0 != "Sequential") == overlap  # replicate's in-place class, same names
        for micro in range(4):
            same = [
                torch.equal(torch.tensor(a), torch.tensor(b))
                for a, b in zip(grads0[micro], grads1[micro], strict=True)
            ]
            boundary = micro % 2 == 1
            assert all(same) if boundary else not any(same), (overlap, micro)
    for rank in (0, 1):
        for with_overlap, without in zip(
            results[True][rank][2], results[False][rank][2], strict=True
        ):
            assert torch.equal(torch.tensor(with_overlap), torch.tensor(without))
