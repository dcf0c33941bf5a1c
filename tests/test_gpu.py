"""What only a CUDA GPU can check (`pytest -m gpu`, run by `make gpu-check`; skipped without
CUDA): DALI's `mixed` decoding against its CPU mode, bf16 and fp16 engine steps, nccl, and a
checkpoint written on the GPU that loads on a CPU and resumes."""

import os
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch

from pose.config import load_config
from pose.data.loader import LoaderSpec
from pose.data.sharding import ShardRequest, shard_dataset
from pose.engine.deepspeed_adapter import MODEL_STATES_FILE, build_engine
from pose.engine.trainer import train_step
from pose.models import build_model
from pose.run_folder import RunFolder

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]
GPU, CPU = torch.device("cuda"), torch.device("cpu")
TRAIN = ["launch/train.py", "--config", "configs/demo.yaml"]


@pytest.fixture(scope="module")
def fixture_shards(coco_fixtures, tmp_path_factory):
    """The real COCO fixtures cropped at 256x192 detail."""
    out = tmp_path_factory.mktemp("gpu") / "shards"
    request = ShardRequest(coco_fixtures / "test_coco.json", coco_fixtures, out, split="train")
    shard_dataset(replace(request, detail=(256, 192), progress=False))
    return out


def data_config(shards, **extra):
    overrides = [f"data.train_shards={shards}", f"data.val_shards={shards}"]
    overrides += ["data.image_size=[256,192]", "data.flip_prob=0.5", "data.rotation_prob=1.0"]
    return load_config("configs/demo.yaml", [*overrides, *(f"{k}={v}" for k, v in extra.items())])


def test_dali_mixed_decoding_matches_its_cpu_mode_flip_and_rotation_included(fixture_shards):
    """nvJPEG and libjpeg-turbo may round differently (a grey level here and there); the
    geometry is the same arithmetic: keypoints equal to 1e-3 px, images to a few grey levels."""
    from pose.data.dali import DaliLoader

    cfg = data_config(fixture_shards, **{"data.backend": "dali"}).data
    batches = {}
    for device in (GPU, CPU):
        loader = DaliLoader(LoaderSpec(cfg, "train", 4, device=device, seed=3))
        batches[device.type] = [{k: v.cpu() for k, v in b.items()} for b in loader.epoch(0)]
    assert len(batches["cuda"]) == len(batches["cpu"]) > 0
    for on_gpu, on_cpu in zip(batches["cuda"], batches["cpu"]):
        torch.testing.assert_close(on_gpu["keypoints"], on_cpu["keypoints"], atol=1e-3, rtol=0)
        difference = (on_gpu["image"].float() - on_cpu["image"].float()).abs()
        # normalised images: one grey level is about 1 / (255 * 0.226) = 0.017
        assert difference.mean() < 0.02 and torch.quantile(difference.flatten(), 0.99) < 0.2


def engine_step(cfg, precision: str, batch: dict, seed: int = 0):
    torch.manual_seed(seed)
    model = build_model(cfg.model, 17).to(GPU).to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    engine = build_engine(model, optimizer, None, cfg.train, 1, precision)
    loss, skipped = train_step(engine, batch, cfg.data, cfg.train)
    return engine, model, optimizer, loss, skipped


def gpu_batch(seed: int = 0, size=(256, 192), n: int = 8) -> dict:
    generator = torch.Generator().manual_seed(seed)
    image = torch.randn(n, 3, *size, generator=generator)
    keypoints = torch.rand(n, 17, 3, generator=generator) * torch.tensor([size[1], size[0], 1.0])
    keypoints[..., 2] = 1.0
    return {"image": image.to(GPU), "keypoints": keypoints.to(GPU)}


@pytest.fixture()
def gpu_cfg(tmp_path):
    from pose.engine.distributed import init_distributed

    cfg = load_config(
        "configs/demo.yaml",
        ["data.image_size=[256,192]", "model.backbone=resnet50", "log.wandb=off"],
    )
    init_distributed(cfg.launch)
    return cfg


def test_a_bf16_step_matches_fp32_and_keeps_norm_statistics_and_optimizer_state_fp32(gpu_cfg):
    batch = gpu_batch()
    _, fp32_model, _, fp32_loss, _ = engine_step(gpu_cfg, "fp32", batch)
    _, model, optimizer, loss, skipped = engine_step(gpu_cfg, "bf16", batch)
    assert skipped.item() == 0
    torch.testing.assert_close(loss.float(), fp32_loss.float(), rtol=2e-2, atol=1e-6)
    for name, value in model.state_dict().items():
        assert value.dtype in (torch.float32, torch.int64), name  # weights, BN running stats
    for state in optimizer.state.values():
        assert all(v.dtype == torch.float32 for v in state.values() if v.is_floating_point())
    bf16, fp32 = model.state_dict(), fp32_model.state_dict()
    for name in bf16:
        if bf16[name].is_floating_point():
            torch.testing.assert_close(bf16[name], fp32[name], rtol=5e-2, atol=2e-3)


def test_fp16_skips_and_counts_an_overflowing_step_then_trains_on(gpu_cfg):
    fp16 = replace(gpu_cfg, train=replace(gpu_cfg.train, precision="fp16"))
    batch = gpu_batch()
    engine, model, _, _, skipped = engine_step(fp16, "fp16", batch)
    assert skipped.item() == 0
    overflowing = dict(batch, image=batch["image"] * 1e30)  # inf activations in fp16
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _, skipped = train_step(engine, overflowing, fp16.data, fp16.train)
    assert skipped.item() == 1
    for name, value in model.state_dict().items():
        if value.is_floating_point() and "running" not in name and "num_batches" not in name:
            assert torch.equal(value, before[name]), f"{name} changed on a skipped step"
    losses = [train_step(engine, batch, fp16.data, fp16.train) for _ in range(3)]
    assert all(torch.isfinite(loss) for loss, _ in losses)


def test_nccl_initialises_and_reduces_in_one_process(tmp_path):
    import torch.distributed as dist

    from pose.engine.distributed import free_port

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    dist.init_process_group("nccl", rank=0, world_size=1, device_id=GPU)
    try:
        value = torch.ones(4, device=GPU)
        dist.all_reduce(value)
        assert value.sum().item() == 4
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_a_checkpoint_written_on_the_gpu_loads_on_a_cpu_and_resumes(
    shards, tmp_path, tiny_overrides, run_python
):
    """GPU convolutions may pick non-deterministic algorithms, so the resumed run is compared
    with the uninterrupted one to a tolerance, not bit for bit."""
    extra = {"train.precision": "bf16", "train.checkpoint_every": 3, "data.backend": "torch"}
    whole = run_python(
        [*TRAIN, *tiny_overrides(shards, tmp_path / "whole", **extra, **{"train.max_steps": 6})]
    )
    assert whole.returncode == 0, whole.stderr[-3000:]
    run = tmp_path / "parts"
    first = run_python([*TRAIN, *tiny_overrides(shards, run, **extra, **{"train.max_steps": 3})])
    assert first.returncode == 0, first.stderr[-3000:]
    folder = RunFolder(run)
    saved = torch.load(
        folder.checkpoint(folder.latest_tag()) / MODEL_STATES_FILE,
        map_location="cpu",
        weights_only=True,
    )["module"]
    assert all(v.device == CPU for v in saved.values())
    cpu_model = build_model(load_config(folder.config).model, 17)
    cpu_model.load_state_dict(saved)  # loads on a machine without the GPU
    rest = run_python([*TRAIN, *tiny_overrides(shards, run, **extra, **{"train.max_steps": 6})])
    assert rest.returncode == 0, rest.stderr[-3000:]
    assert "resuming" in rest.stdout
    a, b = (
        torch.load(
            RunFolder(r).checkpoint(RunFolder(r).latest_tag()) / MODEL_STATES_FILE,
            map_location="cpu",
            weights_only=True,
        )["module"]
        for r in (tmp_path / "whole", run)
    )
    for key in a:
        if a[key].is_floating_point():
            np.testing.assert_allclose(a[key].numpy(), b[key].numpy(), rtol=1e-3, atol=1e-5)


def test_this_process_sees_the_gpu():
    print(torch.cuda.get_device_name(0), torch.version.cuda, sys.version.split()[0])
    assert torch.cuda.device_count() >= 1
