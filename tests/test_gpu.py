"""What the GPU check runs (`pytest -m gpu`, from `make gpu-check`), written so that a wrong GPU
path fails: the bf16 step's gradients against fp32's and proof that autocast ran in bf16; an
fp16 overflow that the loss scaler must skip with the model still usable; nccl; DALI's `mixed`
decoding against its CPU mode; a checkpoint written on the GPU that loads where there is no
CUDA and resumes.

The precision and checkpoint tests run on DeepSpeed's accelerator: the GPU when there is one,
else the CPU (torch autocasts to bf16 and fp16 there too), so that `make test` runs them before
a GPU ever does. The tests of the checks themselves (below each) show that each one fails on a
deliberately broken variant: negated, random, zero or vanishing gradients; autocast left off; a
model that gives NaN after an overflow; a checkpoint read back onto a CUDA device."""

import contextlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from unittest import mock

import numpy as np
import pytest
import torch

from pose.config import load_config
from pose.data.loader import LoaderSpec
from pose.data.sharding import ShardRequest, shard_dataset
from pose.engine.trainer import train_step
from pose.folders import MODEL_STATES_FILE, RunFolder
from pose.models import build_model

ON_GPU = torch.cuda.is_available()
CPU = torch.device("cpu")
DEVICE = torch.device("cuda", 0) if ON_GPU else CPU
needs_cuda = pytest.mark.skipif(not ON_GPU, reason="needs a CUDA GPU")
TRAIN = ["launch/train.py", "--config", "configs/demo.yaml"]
LOWER_PRECISION_MODULES = (torch.nn.Conv2d, torch.nn.ConvTranspose2d, torch.nn.Linear)

# How far a bf16 step's gradients may be from fp32's, per parameter and over all parameters
# together (cosine, and relative error |g - g32| / |g32|). Measured on the CPU with the config
# below (ResNet-18, 128x96, batch 4, bf16 autocast, three seeds): per parameter, cosine >= 0.83
# and relative error <= 0.58 (early BatchNorm parameters, whose gradients are small differences
# of large sums, are the worst); over all, cosine 0.998 and relative error 0.067. Negated
# gradients give cosine -1, random ones ~0, zero or vanishing (x1e-6) ones a relative error of
# ~1: each fails by far. (A ResNet-50 at 256x192 at initialisation has per-parameter cosines
# down to -0.2 in bf16, so the test uses the small model on every device.)
PARAMETER_BOUNDS = 0.5, 0.85  # min cosine, max relative error
OVERALL_BOUNDS = 0.99, 0.15


def precision_config():
    """The demo config (a ResNet-18 at 128x96) without gradient clipping, on every device."""
    from pose.distributed import init_distributed

    cfg = load_config("configs/demo.yaml", ["log.wandb=off", "optimizer.grad_clip=0"])
    init_distributed(cfg.launch)
    return cfg


def device_batch(cfg, seed: int = 0, n: int = 4) -> dict:
    generator = torch.Generator().manual_seed(seed)
    height, width = cfg.data.image_size
    image = torch.randn(n, 3, height, width, generator=generator)
    keypoints = torch.rand(n, 17, 3, generator=generator) * torch.tensor([width, height, 1.0])
    keypoints[..., 2] = 1.0
    return {"image": image.to(DEVICE), "keypoints": keypoints.to(DEVICE)}


class EngineStep:
    """One training step of `precision` through the real path: the model, optimizer and engine
    built by `build_training` as the trainer builds them (prepared, compiled or not,
    channels_last on a GPU), and `train_step`; it records the output dtype of every convolution
    and linear layer (what autocast ran them in) and the gradients the optimizer was handed
    (captured just before it applies them)."""

    def __init__(self, cfg, precision: str, seed: int = 0):
        import pose.engine.build
        from pose.distributed import init_distributed
        from pose.engine.build import build_training

        torch.manual_seed(seed)
        cfg = replace(cfg, engine=replace(cfg.engine, precision=precision))
        # fp16 is refused on a CPU (it only makes sense on a GPU); here it runs anyway, through
        # torch's CPU autocast, so that `make test` takes the fp16 path before a GPU does
        asked = mock.patch.object(pose.engine.build, "resolve_precision", lambda p, device: p)
        with asked if precision == "fp16" and not ON_GPU else contextlib.nullcontext():
            training = build_training(cfg, 17, init_distributed(cfg.launch))
        self.cfg, self.model = cfg, training.model
        self.optimizer, self.engine = training.optimizer, training.engine
        self.layer_dtypes: set[torch.dtype] = set()
        self.gradients: dict[str, torch.Tensor] = {}
        for module in self.model.modules():
            if isinstance(module, LOWER_PRECISION_MODULES):
                module.register_forward_hook(self._record_dtype)
        self.optimizer.register_step_pre_hook(self._capture_gradients)

    def _record_dtype(self, module, inputs, output):
        self.layer_dtypes.add(output.dtype)

    def _capture_gradients(self, optimizer, args, kwargs):
        self.gradients = {
            name: p.grad.detach().float().clone()
            for name, p in self.model.named_parameters()
            if p.grad is not None
        }

    def step(self, batch: dict):
        return train_step(self.engine, batch, self.cfg.data, self.cfg.loss)


def gradient_disagreements(candidate: dict, reference: dict) -> list[str]:
    """Where the candidate gradients differ from the reference's beyond the bounds above: each
    parameter (a parameter missing from either is one too), and all of them together."""
    problems = [f"{name}: no gradient" for name in sorted(set(reference) ^ set(candidate))]
    names = sorted(set(reference) & set(candidate))
    pairs = [(name, candidate[name].flatten(), reference[name].flatten()) for name in names]
    pairs = [(name, a, b) for name, a, b in pairs if b.norm() > 0]  # the loss reaches them
    overall = torch.cat([a for _, a, _ in pairs]), torch.cat([b for _, _, b in pairs])
    for name, (a, b), bounds in [
        *((name, (a, b), PARAMETER_BOUNDS) for name, a, b in pairs),
        ("all parameters", overall, OVERALL_BOUNDS),
    ]:
        cosine = torch.nn.functional.cosine_similarity(a, b, dim=0).item()
        relative = ((a - b).norm() / b.norm()).item()
        if not (cosine >= bounds[0] and relative <= bounds[1]):
            problems.append(f"{name}: cosine {cosine:.3f}, relative error {relative:.3f}")
    return problems


def run_bf16_and_fp32_steps() -> dict:
    """The same step in fp32 (true fp32: TF32 off on a GPU) and in bf16, on the accelerator."""
    cfg = precision_config()
    batch = device_batch(cfg)
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        fp32 = EngineStep(cfg, "fp32")
        fp32_loss, _ = fp32.step(batch)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    bf16 = EngineStep(cfg, "bf16")
    bf16_loss, skipped = bf16.step(batch)
    return {"fp32": (fp32, fp32_loss), "bf16": (bf16, bf16_loss), "skipped": skipped}


@pytest.fixture(scope="module")
def bf16_and_fp32_steps():
    return run_bf16_and_fp32_steps()


def bf16_step_problems(steps: dict) -> list[str]:
    """What is wrong with the bf16 step against the fp32 one: layers not run in bf16, a loss
    equal to fp32's (bf16 not applied) or far from it, gradients beyond the bounds, weights,
    BatchNorm statistics or optimizer state not kept in fp32."""
    (fp32, fp32_loss), (bf16, bf16_loss) = steps["fp32"], steps["bf16"]
    problems = []
    if steps["skipped"].item() != 0:
        problems.append("the bf16 step was skipped")
    if bf16.layer_dtypes != {torch.bfloat16}:
        problems.append(f"autocast ran the layers in {bf16.layer_dtypes}, not bf16")
    if fp32.layer_dtypes != {torch.float32}:
        problems.append(f"the fp32 step ran its layers in {fp32.layer_dtypes}")
    if bf16_loss.item() == fp32_loss.item():
        problems.append("the bf16 loss equals fp32's: bf16 was not applied")
    elif not torch.allclose(bf16_loss.float(), fp32_loss.float(), rtol=2e-2, atol=1e-6):
        problems.append(f"the bf16 loss {bf16_loss.item()} is far from fp32's {fp32_loss.item()}")
    if len(bf16.gradients) != len(list(bf16.model.parameters())):
        problems.append("not every parameter got a gradient")
    problems += gradient_disagreements(bf16.gradients, fp32.gradients)
    for name, value in bf16.model.state_dict().items():
        if value.dtype not in (torch.float32, torch.int64):  # weights, BN running stats
            problems.append(f"{name} is kept in {value.dtype}, not fp32")
    for state in bf16.optimizer.state.values():
        if any(v.dtype != torch.float32 for v in state.values() if v.is_floating_point()):
            problems.append("the optimizer state is not fp32")
            break
    return problems


@pytest.mark.gpu
def test_a_bf16_step_runs_in_bf16_and_its_gradients_match_fp32(bf16_and_fp32_steps):
    problems = bf16_step_problems(bf16_and_fp32_steps)
    assert not problems, "the bf16 step is wrong:\n" + "\n".join(problems)


def test_the_bf16_check_fails_when_prepare_model_casts_batchnorm_to_bf16(monkeypatch):
    """The check goes through the model path the trainer takes: a `prepare_model` that casts
    BatchNorm to bf16 when training in bf16 (its running statistics would then drift in bf16)
    fails it."""
    import pose.engine.build

    real = pose.engine.build.prepare_model

    def casting_batchnorm(model, engine, device):
        model = real(model, engine, device)
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d) and engine.precision == "bf16":
                module.to(torch.bfloat16)
        return model

    monkeypatch.setattr(pose.engine.build, "prepare_model", casting_batchnorm)
    problems = bf16_step_problems(run_bf16_and_fp32_steps())
    assert any("bn1.running_mean is kept in torch.bfloat16" in p for p in problems), problems


@pytest.mark.parametrize(
    "broken",
    [
        pytest.param(lambda g: -g, id="negated"),
        pytest.param(lambda g: torch.randn_like(g) * g.norm() / g.numel() ** 0.5, id="random"),
        pytest.param(torch.zeros_like, id="zero"),
        pytest.param(lambda g: g * 1e-6, id="vanishing"),
    ],
)
def test_the_gradient_check_fails_on_a_broken_backward(bf16_and_fp32_steps, broken):
    fp32, bf16 = bf16_and_fp32_steps["fp32"][0], bf16_and_fp32_steps["bf16"][0]
    wrong = {name: broken(g) for name, g in bf16.gradients.items()}
    problems = gradient_disagreements(wrong, fp32.gradients)
    assert len(problems) >= 0.9 * len(fp32.gradients)
    assert any(p.startswith("all parameters") for p in problems)


def test_the_gradient_check_fails_when_autocast_is_left_off():
    """A 'bf16' engine whose autocast never ran shows fp32 layer outputs and fp32's loss."""
    cfg = precision_config()
    batch = device_batch(cfg)
    runs = [EngineStep(cfg, "fp32") for _ in range(2)]
    losses = [run.step(batch)[0].item() for run in runs]
    assert runs[1].layer_dtypes != {torch.bfloat16}
    assert losses[0] == losses[1]


@pytest.mark.gpu
def test_fp16_skips_a_step_whose_gradients_overflow_and_the_model_stays_finite():
    """The overflow is injected into one gradient (what a too-large loss scale causes), so the
    forward and BatchNorm's running statistics are those of a normal step: a skipped step must
    leave the weights as they were and the scale halved, and eval and training go on finite."""
    cfg = precision_config()
    batch = device_batch(cfg)
    run = EngineStep(cfg, "fp16")
    assert run.step(batch)[1].item() == 0
    assert run.layer_dtypes == {torch.float16}
    scale = run.engine.loss_scale().item()
    weights = {k: v.clone() for k, v in run.model.named_parameters()}
    last = list(run.model.parameters())[-1]
    handle = last.register_hook(lambda grad: torch.full_like(grad, float("inf")))
    _, skipped = run.step(batch)
    handle.remove()
    assert skipped.item() == 1
    assert run.engine.loss_scale().item() == scale / 2
    for name, value in run.model.named_parameters():
        assert torch.equal(value, weights[name]), f"{name} changed on a skipped step"
    assert_finite(run.model, batch)
    losses = [run.step(batch)[0] for _ in range(3)]
    assert all(torch.isfinite(loss) for loss in losses)
    assert_finite(run.model, batch)


def assert_finite(model: torch.nn.Module, batch: dict) -> None:
    """Every floating state entry (BatchNorm's running statistics included) and the eval
    outputs of `batch` are finite."""
    for name, value in model.state_dict().items():
        if value.is_floating_point():
            assert torch.isfinite(value).all(), f"{name} is not finite"
    model.eval()
    with torch.no_grad():
        assert torch.isfinite(model(batch["image"])).all(), "eval outputs are not finite"
    model.train()


def test_the_finite_check_fails_on_a_model_poisoned_by_an_inf_forward():
    """An inf in the input of a training forward makes BatchNorm's running statistics NaN: the
    eval outputs are NaN, which the fp16 test's check must catch."""
    cfg = precision_config()
    model = build_model(cfg.model, 17).to(DEVICE)
    batch = device_batch(cfg, n=2)
    model(batch["image"] * float("inf"))
    with pytest.raises(AssertionError, match="not finite"):
        assert_finite(model, batch)


# One rank of a reduction check: the project's init_distributed picks the backend (nccl on a
# GPU, gloo on a CPU) and starts the group; each collective must give what only a real one
# gives: the sum of every rank's rank+1, the gather of them in rank order, and on nccl a
# pre-multiplied sum (x3), which differs from the input even on a world of one. Prints the
# backend and the problems found as JSON. POSESCALE_TEST_NO_OP_ALL_REDUCE=1 breaks all_reduce
# (it returns without reducing), for the test that the check catches it.
REDUCTION_CHECK = """
import json, os, torch, torch.distributed as dist
from pose.config import LaunchConfig
from pose.distributed import init_distributed, shutdown

env = init_distributed(LaunchConfig(), always_group=True)
if os.environ.get("POSESCALE_TEST_NO_OP_ALL_REDUCE") == "1":
    dist.all_reduce = lambda tensor, *args, **kwargs: None
world, mine, problems = env.world_size, float(env.rank + 1), []
total = world * (world + 1) / 2
value = torch.full((4,), mine, device=env.device)
dist.all_reduce(value)
if not torch.all(value == total):
    problems.append(f"all_reduce: {value.tolist()}, not {total}")
gathered = torch.zeros(world, device=env.device)
dist.all_gather_into_tensor(gathered, torch.full((1,), mine, device=env.device))
if gathered.tolist() != [float(r + 1) for r in range(world)]:
    problems.append(f"all_gather: {gathered.tolist()}")
if env.backend == "nccl":
    value = torch.full((4,), mine, device=env.device)
    dist.all_reduce(value, op=dist._make_nccl_premul_sum(3.0))
    if not torch.all(value == 3 * total):
        problems.append(f"all_reduce of a x3 pre-multiplied sum: {value.tolist()}, not {3 * total}")
dist.barrier()
shutdown()
print(json.dumps({"backend": env.backend, "device": str(env.device), "problems": problems}))
"""


def run_reduction_check(world: int, clean_env, **extra_env) -> list[dict]:
    """REDUCTION_CHECK on `world` ranks started as torchrun starts them; each rank's report."""
    from pose.distributed import free_port

    port, ranks = str(free_port()), []
    for rank in range(world):
        env = clean_env(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world))
        env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port, **extra_env)
        command = [sys.executable, "-c", REDUCTION_CHECK]
        ranks.append(subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True))
    outputs = [p.communicate(timeout=300)[0] for p in ranks]
    assert all(p.returncode == 0 for p in ranks), outputs
    return [json.loads(out.strip().splitlines()[-1]) for out in outputs]


@pytest.mark.gpu
@needs_cuda
def test_nccl_reduces_through_the_projects_distributed_setup(clean_env):
    """On every GPU of the machine, one rank each (nccl refuses two ranks on one GPU)."""
    reports = run_reduction_check(torch.cuda.device_count(), clean_env)
    assert {r["backend"] for r in reports} == {"nccl"}
    assert [r["problems"] for r in reports] == [[]] * len(reports)


def test_the_reduction_check_passes_on_two_gloo_ranks_and_fails_a_no_op_all_reduce(clean_env):
    """What the nccl test above must catch, shown here with gloo: two CPU ranks reduce
    correctly; with all_reduce made a no-op, every rank reports it."""
    env = {"CUDA_VISIBLE_DEVICES": ""}
    assert [r["problems"] for r in run_reduction_check(2, clean_env, **env)] == [[], []]
    broken = run_reduction_check(2, clean_env, POSESCALE_TEST_NO_OP_ALL_REDUCE="1", **env)
    assert all(r["backend"] == "gloo" for r in broken)
    assert all(any(p.startswith("all_reduce:") for p in r["problems"]) for r in broken)


@pytest.fixture(scope="module")
def fixture_shards(coco_fixtures, tmp_path_factory):
    """The real COCO fixtures cropped at 256x192 detail."""
    out = tmp_path_factory.mktemp("gpu") / "shards"
    request = ShardRequest(coco_fixtures / "test_coco.json", coco_fixtures, out, split="train")
    shard_dataset(replace(request, detail=(256, 192), progress=False))
    return out


def dali_batches(shards, device: torch.device) -> list[dict]:
    """One epoch of DALI batches of `shards` on `device`, flip and rotation included."""
    from pose.data.dali import DaliLoader

    overrides = [f"data.train_shards={shards}", f"data.val_shards={shards}"]
    overrides += ["data.image_size=[256,192]", "data.flip_prob=0.5", "data.rotation_prob=1.0"]
    cfg = load_config("configs/demo.yaml", [*overrides, "data.backend=dali"]).data
    loader = DaliLoader(LoaderSpec(cfg, "train", 4, device=device, seed=3))
    return [{k: v.cpu() for k, v in b.items()} for b in loader.epoch(0)]


def assert_same_crops(got: list[dict], expected: list[dict]) -> None:
    """nvJPEG and libjpeg-turbo may round differently (a grey level here and there); the
    geometry is the same arithmetic: keypoints equal to 1e-3 px, images to a few grey levels."""
    assert len(got) == len(expected) > 0
    for a, b in zip(got, expected):
        torch.testing.assert_close(a["keypoints"], b["keypoints"], atol=1e-3, rtol=0)
        difference = (a["image"].float() - b["image"].float()).abs()
        # normalised images: one grey level is about 1 / (255 * 0.226) = 0.017
        assert difference.mean() < 0.02, f"mean difference {difference.mean():.3f}"
        assert torch.quantile(difference.flatten(), 0.99) < 0.2, "1% of pixels differ by > 0.2"


@pytest.mark.gpu
@needs_cuda
def test_dali_mixed_decoding_matches_its_cpu_mode_flip_and_rotation_included(fixture_shards):
    assert_same_crops(dali_batches(fixture_shards, DEVICE), dali_batches(fixture_shards, CPU))


def test_the_dali_comparison_fails_on_a_quarter_pixel_shift_or_swapped_channels(fixture_shards):
    """What the GPU test above must catch, made from DALI's CPU output: the crops a quarter
    pixel to the side (images interpolated, keypoints moved), or in BGR order."""
    batches = dali_batches(fixture_shards, CPU)
    assert_same_crops(batches, batches)

    def shifted(b):
        image = 0.75 * b["image"] + 0.25 * torch.roll(b["image"], 1, dims=-1)
        return dict(b, image=image, keypoints=b["keypoints"] + torch.tensor([0.25, 0, 0]))

    def image_shifted(b):
        return dict(shifted(b), keypoints=b["keypoints"])

    def bgr(b):
        return dict(b, image=b["image"].flip(1))

    for broken in (shifted, image_shifted, bgr):
        with pytest.raises(AssertionError):
            assert_same_crops([broken(b) for b in batches], batches)


def tag_as_written_on_a_gpu(path) -> None:
    """Rewrite a checkpoint file so that every tensor records `cuda:0` as its device, as one
    saved on a GPU does (torch.load without a map_location then needs CUDA)."""
    state = torch.load(path, map_location="cpu", weights_only=False)  # our own file
    with mock.patch.object(torch.serialization, "location_tag", lambda storage: "cuda:0"):
        torch.save(state, path)


LOAD_WITHOUT_CUDA = """
import sys, torch
from pose.config import load_config
from pose.folders import RunFolder, resolve_trained
from pose.models import build_model
from pose.models.weights import load_model_weights
assert not torch.cuda.is_available()
model = build_model(load_config(RunFolder(sys.argv[1]).config).model, 17)
load_model_weights(model, resolve_trained(sys.argv[1]).weights)
print("loaded", sum(p.numel() for p in model.parameters()))
"""


@pytest.mark.gpu
@pytest.mark.slow
def test_a_checkpoint_written_on_the_gpu_loads_without_cuda_and_resumes(
    shards, tmp_path, tiny_overrides, run_python
):
    """Trained on the GPU (bf16) when there is one; on a CPU the checkpoint's tensors are
    re-tagged as CUDA tensors, which is all that tells a GPU checkpoint from a CPU one. A copy
    of a finished 6-step run is set back to its step-3 checkpoint, loaded in a process that
    cannot see CUDA (CUDA_VISIBLE_DEVICES=""), and resumed to step 6: its weights must be the
    uninterrupted run's (to a tolerance: GPU convolutions may pick non-deterministic
    algorithms)."""
    extra = {"checkpoint.every_steps": 3, "checkpoint.keep_last": 100, "data.backend": "torch"}
    extra.update({"engine.precision": "bf16" if ON_GPU else "fp32", "train.max_steps": 6})
    whole = run_python([*TRAIN, *tiny_overrides(shards, tmp_path / "whole", **extra)])
    assert whole.returncode == 0, whole.stderr[-3000:]
    run = tmp_path / "parts"
    shutil.copytree(tmp_path / "whole", run)
    folder = RunFolder(run)
    for tag in folder.checkpoint_tags():
        if tag > "step-000000003":
            shutil.rmtree(folder.checkpoint(tag))
    folder.set_latest("step-000000003")
    if not ON_GPU:
        for path in sorted(folder.checkpoint("step-000000003").glob("*.pt")):
            tag_as_written_on_a_gpu(path)
    loaded = run_python(["-c", LOAD_WITHOUT_CUDA, run], env={"CUDA_VISIBLE_DEVICES": ""})
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    assert loaded.stdout.startswith("loaded")
    rest = run_python([*TRAIN, *tiny_overrides(shards, run, **extra)])
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
    assert RunFolder(run).latest_tag() == "step-000000006"
    for key in a:
        if a[key].is_floating_point():
            np.testing.assert_allclose(a[key].numpy(), b[key].numpy(), rtol=1e-3, atol=1e-5)


def test_a_checkpoint_tagged_as_written_on_a_gpu_needs_a_map_location(tmp_path):
    """The re-tagging above is faithful: read back without a map_location, in a process that
    cannot see CUDA, such a file fails as a real GPU checkpoint does."""
    path = tmp_path / "weights.pt"
    torch.save({"module": {"w": torch.ones(2)}}, path)
    tag_as_written_on_a_gpu(path)
    load = f"import torch; torch.load({str(path)!r}, weights_only=True)"
    done = subprocess.run(
        [sys.executable, "-c", load],
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
        capture_output=True,
        text=True,
    )
    assert done.returncode != 0
    assert "CUDA" in done.stderr


@pytest.mark.gpu
@needs_cuda
def test_this_process_sees_the_gpu():
    print(torch.cuda.get_device_name(0), torch.version.cuda, sys.version.split()[0])
    assert torch.cuda.device_count() >= 1
