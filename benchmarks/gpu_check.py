"""The GPU check (`make gpu-check`): on a machine with a CUDA GPU, the gpu-marked tests and the
training throughput and peak memory per GPU of ResNet-50, ViTPose-B and HRNet-W32 at 256x192
(each by its recipe), written to OUT/report.md and report.json as each test and each row
finishes (a row that raises is recorded with its error and the check goes on; a deadline skips
what no longer fits, each skip recorded).

    python benchmarks/gpu_check.py [--out runs/gpu-check] [--rows tests,device-128,...]
        [--budget-s S] [--steps N] [--skip-tests] [--quick] [--cpu]
    python benchmarks/gpu_check.py --cpu --quick    # the same code on a CPU, small sizes

Rows, in the default order (the most telling first; --rows picks and orders them):
  tests             `pytest -m gpu` (tests/test_gpu.py), each test's outcome as it finishes;
                    a missing COCO fixture or optional extra fails there
                    (POSESCALE_REQUIRE_ALL=1); a collection error is reported with its cause
  device-B          the training step (forward, loss, backward, Adam) on a batch on the device
  dali-B            end to end: DALI (`mixed` decoding on a GPU) reading shards, the same step
  torch-B           end to end: the torch backend with one worker per core, the same step
  ...-compiled      the same with torch.compile
  ...@MODEL         the same for another recipe's model (vitpose_b, hrnet_w32; RECIPES)
  predict-B         inference's whole path on B images a call: a torchvision person detector
                    (Faster R-CNN ResNet-50 FPN v2; SSDlite with --quick), random weights, then
                    the pose model on the crops, decoded to image pixels (fp32)
bf16 (fp32 on a CPU), channels_last, one device. Every end-to-end row reads a fresh epoch of
shards holding enough samples for its warm-up and timed steps, so the timed steps run in steady
state (no epoch start, no new DALI pipeline or worker start among them; each row records its
samples, batches per epoch, steps and workers). Reported per row: images/s, the data-wait
fraction (1 - end-to-end / device rate at that batch), peak memory and model FLOPs utilisation:
training FLOPs per image (torch's FLOP counter, forward and backward) x images/s / the GPU's
dense bf16 peak (PEAK_BF16). The shards are made here from the synthetic generator at the COCO
recipe's 384x288 detail. Without CUDA (and without --cpu) it says so and exits 0. Exit 1 when a
test fails or a row raises.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import re
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from pose.caches import use_cache_folders
from pose.config import load_config
from pose.data.backends import build_loader
from pose.data.layout import COCO_17
from pose.data.loader import LoaderSpec, normalise
from pose.data.shards import ShardSet, is_shard_folder
from pose.distributed import init_distributed
from pose.engine.build import build_training
from pose.engine.trainer import train_step
from pose.files import atomic_write
from pose.models import build_model
from pose.timing import timed

ROOT = Path(__file__).resolve().parents[1]
# What every row trains: the synthetic people (data_prep/synthetic.py) carry COCO's 17 joints.
LAYOUT = COCO_17

# Peak dense (no sparsity) bf16 tensor-core rates in TFLOP/s, from NVIDIA's data sheets (SXM
# parts; PCIe/NVL parts are lower, so MFU on those reads low).
PEAK_BF16 = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0}
PEAK_SOURCE = "NVIDIA data sheets, dense bf16 tensor-core peak (SXM)"
WARMUP_STEPS = {False: 3, True: 5}  # compiling happens in the warm-up steps
# Seconds a row is assumed to take before one of its kind has run (then: the longest seen).
ROW_ESTIMATE_S = {False: 30.0, True: 150.0}
PEOPLE_PER_IMAGE = 1.4  # the synthetic generator's lower bound on average, with margin
# The models rows train (`@MODEL`; resnet50 without one), each by its recipe
RECIPES = {
    "resnet50": "configs/coco_res50_256x192.yaml",
    "vitpose_b": "configs/coco_vitpose_b_256x192.yaml",
    "hrnet_w32": "configs/coco_hrnet_w32_256x192.yaml",
}


@dataclass(frozen=True)
class Row:
    source: str  # device, dali, torch, or predict
    batch: int
    compile: bool = False
    model: str = "resnet50"  # a key of RECIPES

    @property
    def name(self) -> str:
        name = f"{self.source}-{self.batch}" + ("-compiled" if self.compile else "")
        return name if self.model == "resnet50" else f"{name}@{self.model}"


def default_rows(quick: bool) -> list[str]:
    """Row names in order of importance: the tests, then the largest batch (device, both
    pipelines, compiled), then the smaller batches."""
    if quick:  # the code paths, a compiled one included, not the numbers
        return ["tests", "device-2", "dali-2", "torch-2", "device-2-compiled", "predict-2"] + [
            f"device-2@{m}" for m in RECIPES if m != "resnet50"
        ]
    names = ["tests", "device-128", "dali-128", "torch-128", "device-128-compiled", "predict-8"]
    names += ["device-64@vitpose_b", "device-32@hrnet_w32"]  # the recipes' batches per GPU
    names += ["dali-128-compiled", "torch-128-compiled"]
    names += [f"{s}-{b}" for b in (64, 32) for s in ("device", "dali", "torch")]
    return names + ["device-64-compiled", "device-32-compiled"]


def parse_row(name: str) -> Row:
    match = re.fullmatch(r"(device|dali|torch|predict)-(\d+)(-compiled)?(?:@(\w+))?", name)
    predict_compiled = match is not None and match[1] == "predict" and match[3]
    if not match or (match[4] or "resnet50") not in RECIPES or predict_compiled:
        raise ValueError(
            f"--rows: '{name}' is not a row (tests, predict-BATCH[@MODEL], or "
            "SOURCE-BATCH[-compiled][@MODEL] with SOURCE one of device, dali, torch and MODEL "
            f"one of {', '.join(RECIPES)}: e.g. device-128, dali-64-compiled, "
            "device-64@vitpose_b, predict-8)"
        )
    return Row(match[1], int(match[2]), bool(match[3]), match[4] or "resnet50")


def peak_tflops(device_name: str) -> float | None:
    for model, tflops in PEAK_BF16.items():
        if model in device_name:
            return tflops
    return None


def machine(device: torch.device) -> dict:
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "host_cpus": os.cpu_count(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["gpu_memory_gb"] = round(torch.cuda.get_device_properties(device).total_memory / 2**30)
        try:
            smi = ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]
            info["driver"] = subprocess.run(smi, capture_output=True, text=True).stdout.strip()
        except OSError:
            info["driver"] = "unknown"
    try:
        import nvidia.dali

        info["dali"] = nvidia.dali.__version__
    except ImportError:
        info["dali"] = None
    import deepspeed

    info["deepspeed"] = deepspeed.__version__
    return info


class Report:
    """report.json and report.md, both rewritten (atomically) whenever something is added."""

    def __init__(self, out: Path, info: dict, setup: dict):
        self.out = out
        self.start = time.time()
        self.data = {"machine": info, "setup": setup, "tests": None, "rows": [], "seconds": 0}

    def set_tests(self, tests: dict) -> None:
        self.data["tests"] = tests
        self.write()

    def add_row(self, row: dict) -> None:
        self.data["rows"].append(row)
        add_ratios(self.data["rows"], self.data["setup"])
        self.write()

    def write(self) -> None:
        self.data["seconds"] = round(time.time() - self.start)
        atomic_write(self.out / "report.json", json.dumps(self.data, indent=1) + "\n")
        atomic_write(self.out / "report.md", markdown(self.data))

    @property
    def failed(self) -> bool:
        tests = self.data["tests"] or {}
        broken = tests.get("exit_code") not in (None, 0, 5) or tests.get("error")
        return bool(broken) or any("error" in row for row in self.data["rows"])


TEST_LINE = re.compile(
    r"^(?P<id>\S+::\S+) (?P<outcome>PASSED|FAILED|SKIPPED|ERROR|XFAIL|XPASS)"
    r"(?: \((?P<reason>.*?)\))?\s*(?:\[\s*\d+%\])?$"
)


def run_gpu_tests(out: Path, report: Report, timeout_s: float | None) -> None:
    """`pytest -m gpu -v`, each test's outcome recorded as pytest prints it; the whole output
    in OUT/gpu-tests.txt. A pytest that cannot start is recorded with its own words."""
    junit = out / "gpu-tests.xml"
    command = [sys.executable, "-m", "pytest", "-m", "gpu", "-v", "-p", "no:cacheprovider"]
    command += [f"--junitxml={junit.resolve()}", f"--basetemp={(out / 'tmp').resolve()}"]
    env = {**os.environ, "POSESCALE_REQUIRE_ALL": "1", "PYTHONUNBUFFERED": "1"}
    env["COLUMNS"] = "200"
    tests = {
        "command": "python " + " ".join(command[1:]),
        "results": [],
        "summary": "",
        "exit_code": None,
    }
    report.set_tests(tests)
    start, lines = time.time(), []
    proc = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    deadline = None if timeout_s is None else start + timeout_s
    try:
        for line in proc.stdout:
            lines.append(line)
            record_test_line(line.rstrip("\n"), tests, report)
            if deadline is not None and time.time() > deadline:
                proc.kill()
                tests["error"] = f"stopped at the deadline after {round(time.time() - start)} s"
                break
    finally:
        proc.wait()
    output = "".join(lines)
    atomic_write(out / "gpu-tests.txt", output)
    tests["exit_code"] = proc.returncode
    add_reasons(tests["results"], junit)
    tests["seconds"] = round(time.time() - start)
    summary = [ln for ln in output.splitlines() if re.search(r"\b(passed|failed|error)", ln)]
    tests["summary"] = summary[-1].strip(" =") if summary else ""
    cause = first_error(output)
    if cause is None and not tests["results"] and proc.returncode not in (0, 5):
        # pytest did not run (not installed, say): its last words say why
        why = [ln for ln in output.splitlines() if ln.strip()]
        cause = why[-1] if why else f"exit {proc.returncode}"
    if cause is not None:
        tests["error"] = tests.get("error") or cause
    report.set_tests(tests)
    print(f"gpu-check: tests: {tests['summary'] or tests.get('error')}", flush=True)


def first_error(output: str) -> str | None:
    """The first error pytest reports outside a test's own failure (collecting a module, a
    fixture's setup), with its cause: 'collecting tests/test_x.py: ModuleNotFoundError: ...'
    (the section's first `E` line, else its last line)."""
    lines = output.splitlines()
    for i, line in enumerate(lines):
        heading = re.match(r"^_+ ERROR (collecting|at setup of|at teardown of) (.+?) _+$", line)
        if heading:
            section = []
            for text in lines[i + 1 :]:
                if re.match(r"^(_{3,}|={3,}|-{3,}) ", text):
                    break
                section.append(text)
            marked = [ln[1:].strip() for ln in section if re.match(r"^E\s", ln)]
            plain = [ln.strip() for ln in section if ln.strip()]
            cause = (marked or plain[-1:] or ["no cause printed"])[0]
            return f"{heading[1]} {heading[2]}: {cause}"
    return None


def add_reasons(results: list[dict], junit: Path) -> None:
    """Each skipped or failed test's whole reason, from pytest's JUnit XML report."""
    import xml.etree.ElementTree as ET

    if not junit.is_file():
        return
    reasons = {}
    for case in ET.parse(junit).iter("testcase"):
        node = case.get("classname", "").replace(".", "/") + ".py::" + case.get("name", "")
        for outcome in ("skipped", "failure", "error"):
            found = case.find(outcome)
            if found is not None:
                reasons[node] = (found.get("message") or "").strip()[:500]
    for result in results:
        if reasons.get(result["test"]):
            result["reason"] = reasons[result["test"]]


def record_test_line(line: str, tests: dict, report: Report) -> None:
    """One line of pytest's output: a test's outcome, recorded as it comes."""
    match = TEST_LINE.match(line)
    if match:
        result = {"test": match["id"], "outcome": match["outcome"].lower()}
        if match["reason"]:
            result["reason"] = match["reason"]
        tests["results"].append(result)
        print(f"gpu-check: {result['outcome']:>7} {result['test']}", flush=True)
        report.set_tests(tests)


def make_shards(out: Path, samples: int) -> Path:
    """Synthetic training shards of at least `samples` samples (made once per size)."""
    from data_prep.synthetic import generate
    from pose.data.sharding import ShardRequest, shard_dataset

    images = max(8, math.ceil(samples / PEOPLE_PER_IMAGE))
    data = out / f"data-{images}"
    shards = data / "shards" / "train"
    if not is_shard_folder(shards):
        print(f"gpu-check: making {images} synthetic images and their shards", flush=True)
        generate(data, seed=0, train_images=images, val_images=2, progress=False)
        request = ShardRequest(
            annotations=data / "annotations" / "person_keypoints_train.json",
            images=data / "images" / "train",
            out=shards,
            split="train",
            workers=max(1, min(os.cpu_count() or 1, 16)),
            progress=False,
        )
        shard_dataset(request)
    return shards


def training_flops_per_image(cfg, device: torch.device) -> float:
    """Forward and backward FLOPs of one image, counted by torch (multiply-adds x 2)."""
    from torch.utils.flop_counter import FlopCounterMode

    model = build_model(cfg.model, LAYOUT.num_joints).to(device)
    image = torch.randn(1, 3, *cfg.data.image_size, device=device)
    counter = FlopCounterMode(display=False)
    with counter:
        model(image).float().pow(2).mean().backward()
    return float(counter.get_total_flops())


def measure(cfg, row: Row, env, steps: int, shards: Path | None) -> dict:
    """images/s and peak memory of one row, the timed steps inside one epoch."""
    data, device = cfg.data, env.device
    cfg = replace(cfg, engine=replace(cfg.engine, compile=row.compile))
    cfg = replace(cfg, train=replace(cfg.train, batch_size=row.batch))
    warmup = WARMUP_STEPS[row.compile]
    record = {"source": row.source, "batch": row.batch, "compile": row.compile}
    record["model"] = f"{cfg.model.backbone} " + "x".join(map(str, data.image_size))
    record.update(steps=steps, warmup_steps=warmup)
    if row.source != "device":
        workers = os.cpu_count() if row.source == "torch" else data.num_workers
        data = replace(data, backend=row.source, num_workers=workers, train_shards=str(shards))
        record.update(workers=workers, samples=ShardSet.open(shards).num_samples)
    if row.compile:
        torch._dynamo.reset()  # each compiled row compiles its own model afresh
    torch.manual_seed(0)
    engine = build_training(cfg, LAYOUT.num_joints, env).engine  # the recipe's optimizer
    if row.source == "device":
        fixed = device_batch(row.batch, data.image_size, device, LAYOUT.num_joints)
        batches = iter(lambda: fixed, None)  # the same device batch for ever
    else:
        loader = build_loader(LoaderSpec(data, "train", row.batch, device=device))
        batches = iter(loader.epoch(0))
        per_epoch = loader.batches_per_epoch
        record.update(
            batches_per_epoch=per_epoch,
            epoch_starts_in_timed_steps=max(0, math.ceil((warmup + steps) / per_epoch) - 1),
        )

    def step():
        train_step(engine, next(batches), data, cfg.loss)

    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = timed(step, steps)
    memory = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    record.update(
        images_per_s=round(row.batch / seconds, 1),
        peak_memory_gb=None if memory is None else round(memory, 2),
    )
    return record


def measure_predict(cfg, row: Row, env, args) -> dict:
    """images/s of inference's whole path (detector, crops, pose model, decoding) on `row.batch`
    images of COCO's typical size a call; random weights (the cost does not depend on them)."""
    import numpy as np
    import torchvision

    from pose.inference import PersonDetector, PosePredictor
    from pose.models.trained import TrainedModel

    name = "ssdlite320_mobilenet_v3_large" if args.quick else "fasterrcnn_resnet50_fpn_v2"
    weights = args.out / f"detector-{name}-random.pth"
    if not weights.is_file():
        model = torchvision.models.get_model(name, weights=None, weights_backbone=None)
        torch.save(model.state_dict(), weights)
    detector = PersonDetector(name, weights, env.device, score_thr=0.0, nms_thr=1.0)
    torch.manual_seed(0)
    trained = TrainedModel(cfg, LAYOUT, build_model(cfg.model, LAYOUT.num_joints), None)
    predictor = PosePredictor(trained, detector, env.device)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (427, 640, 3), dtype=np.uint8) for _ in range(row.batch)]
    people = sum(len(p) for p in predictor(images))  # the warm-up call
    if env.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(env.device)
    seconds = timed(lambda: predictor(images), args.steps)
    memory = torch.cuda.max_memory_allocated() / 2**30 if env.device.type == "cuda" else None
    return {
        "source": "predict",
        "batch": row.batch,
        "compile": False,
        "model": f"{name} + {cfg.model.backbone} " + "x".join(map(str, cfg.data.image_size)),
        "steps": args.steps,
        "people_per_call": people,
        "images_per_s": round(row.batch / seconds, 1),
        "peak_memory_gb": None if memory is None else round(memory, 2),
    }


def device_batch(batch: int, image_size, device: torch.device, joints: int) -> dict:
    """A batch as the loaders deliver it (normalised images, keypoints in input pixels with
    visibility), made on the device from random pixels: no shards needed."""
    generator = torch.Generator().manual_seed(0)
    height, width = image_size
    pixels = torch.randint(0, 256, (batch, height, width, 3), generator=generator)
    keypoints = torch.rand(batch, joints, 3, generator=generator)
    keypoints *= torch.tensor([width, height, 1.0])
    keypoints[..., 2] = 1.0
    return {
        "image": normalise(pixels.to(torch.uint8).to(device)),
        "keypoints": keypoints.to(device),
    }


def samples_needed(rows: list[Row], steps: int) -> int:
    """Samples for every end-to-end row's warm-up and timed steps to fit in one epoch."""
    wanted = [(WARMUP_STEPS[r.compile] + steps) * r.batch for r in rows if r.source != "device"]
    return max(wanted, default=0)


class Throughput:
    """The rows: measured and recorded in turn, the model's config and FLOPs worked out at the
    first row and the shards made before the first end-to-end row. A row's exception is
    recorded and the next row runs; a row that would not finish before the deadline is
    recorded as skipped."""

    def __init__(self, args, rows: list[Row], report: Report, device: torch.device):
        self.args, self.rows, self.report, self.device = args, rows, report, device
        self.env = None  # one process, on `device` (--cpu: the CPU even beside a GPU)
        self.cfgs, self.flops, self.shards = {}, {}, None
        self.longest: dict[bool, float] = {}  # seconds of the longest row, by compile

    def _setup(self, model: str) -> None:
        """The config of `model`'s recipe as the rows run it, and its training FLOPs."""
        # random weights: throughput does not depend on them, and the machine may be offline
        overrides = ["log.wandb=off", "train.budget_minutes=0", "model.pretrained="]
        overrides.append("engine.memory_format=channels_last")
        overrides.append(f"engine.precision={'bf16' if self.device.type == 'cuda' else 'fp32'}")
        if self.args.quick:
            overrides.append("data.image_size=[128,96]")
            if model == "resnet50":
                overrides.append("model.backbone=resnet18")
        cfg = load_config(RECIPES[model], overrides)
        if self.env is None:
            self.env = replace(init_distributed(cfg.launch), device=self.device)
            self.report.data["setup"]["precision"] = cfg.engine.precision
        self.cfgs[model] = cfg
        self.flops[model] = training_flops_per_image(cfg, self.device)

    def run(self, row: Row, deadline: float | None) -> None:
        estimate = self.longest.get(row.compile, ROW_ESTIMATE_S[row.compile])
        left = None if deadline is None else deadline - time.time()
        if left is not None and left < estimate:
            skipped = {"name": row.name, "skipped": f"{left:.0f} s left, takes ~{estimate:.0f} s"}
            self.report.add_row(skipped)
            print(f"gpu-check: {row.name}: skipped ({skipped['skipped']})", flush=True)
            return
        start = time.time()
        try:
            record = {"name": row.name, **self._measure(row)}
        except Exception as e:  # any failure of a row is recorded; the next row runs
            record = {"name": row.name, "error": f"{type(e).__name__}: {e}"[:1000]}
            errors = self.args.out / "errors"
            errors.mkdir(exist_ok=True)
            atomic_write(errors / f"{row.name}.txt", traceback.format_exc())
        record["seconds"] = round(time.time() - start, 1)
        self.longest[row.compile] = max(self.longest.get(row.compile, 0.0), record["seconds"])
        self.report.add_row(record)
        print(f"gpu-check: {describe(record)}", flush=True)
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _measure(self, row: Row) -> dict:
        if row.model not in self.cfgs:
            self._setup(row.model)
        if row.source == "predict":
            return measure_predict(self.cfgs[row.model], row, self.env, self.args)
        if row.source != "device" and self.shards is None:
            self.shards = make_shards(self.args.out, samples_needed(self.rows, self.args.steps))
        record = measure(self.cfgs[row.model], row, self.env, self.args.steps, self.shards)
        record["training_gflops_per_image"] = round(self.flops[row.model] / 1e9, 2)
        achieved = self.flops[row.model] * record["images_per_s"] / 1e12
        record["tflops"] = round(achieved, 1)
        peak = self.report.data["setup"].get("peak_bf16_tflops")
        record["mfu"] = None if peak is None else round(achieved / peak, 3)
        return record


def add_ratios(rows: list[dict], setup: dict) -> None:
    """Each end-to-end row's share of the device-batch rate, and its data-wait fraction."""
    device = {
        (r["batch"], r["compile"], r["model"]): r["images_per_s"]
        for r in rows
        if r.get("source") == "device" and "images_per_s" in r
    }
    for row in rows:
        base = device.get((row.get("batch"), row.get("compile"), row.get("model")))
        if row.get("source") not in (None, "device") and base and "images_per_s" in row:
            row["vs_device"] = round(row["images_per_s"] / base, 3)
            row["data_wait"] = round(max(0.0, 1 - row["images_per_s"] / base), 3)


def describe(row: dict) -> str:
    if "error" in row:
        return f"{row['name']}: FAILED: {row['error']}"
    memory = f", {row['peak_memory_gb']} GB" if row.get("peak_memory_gb") is not None else ""
    return f"{row['name']}: {row['images_per_s']} img/s{memory} ({row['seconds']} s)"


def markdown(report: dict) -> str:
    lines = ["# GPU check", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in {**report["machine"], **report["setup"]}.items()]
    tests = report.get("tests")
    if tests:
        lines += ["", f"## Tests (`{tests['command']}`)", ""]
        lines += [f"{tests['summary']} (exit {tests['exit_code']}, {tests.get('seconds')} s)"]
        if tests.get("error"):
            lines += ["", f"**Error:** {tests['error']}"]
        lines += ["", "| test | outcome | reason |", "|---|---|---|"]
        lines += [
            f"| {t['test']} | {t['outcome']} | {t.get('reason', '')} |" for t in tests["results"]
        ]
    if report["rows"]:
        lines += ["", "## Throughput", ""]
        head = "| row | model | images/s | vs device | data wait | memory GB | MFU | samples | "
        head += "batches/epoch | epoch starts timed | steps | workers | s | error or skip |"
        lines += [head, "|" + "---|" * 14]
        keys = ["model", "images_per_s", "vs_device", "data_wait", "peak_memory_gb", "mfu"]
        keys += ["samples"]
        keys += ["batches_per_epoch", "epoch_starts_in_timed_steps", "steps", "workers"]
        for r in report["rows"]:
            cells = [r["name"], *("" if r.get(k) is None else r[k] for k in keys)]
            cells += [r.get("seconds", ""), r.get("error") or r.get("skipped") or ""]
            lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    lines += ["", f"{report['seconds']} s in all."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/gpu-check"))
    parser.add_argument("--rows", help="comma-separated rows to run, in this order (see above)")
    parser.add_argument("--budget-s", type=float, help="stop cleanly before this many seconds")
    parser.add_argument("--steps", type=int, help="timed steps per row (default 20; quick: 2)")
    parser.add_argument("--skip-tests", action="store_true", help="leave out the tests row")
    parser.add_argument("--quick", action="store_true", help="small sizes: the code paths only")
    parser.add_argument("--cpu", action="store_true", help="run on the CPU (a smoke test)")
    args = parser.parse_args(argv)
    names = args.rows.split(",") if args.rows else default_rows(args.quick)
    if args.skip_tests:
        names = [n for n in names if n != "tests"]
    try:
        rows = [parse_row(n) for n in names if n != "tests"]
    except ValueError as e:
        parser.error(str(e))
    args.steps = args.steps or (2 if args.quick else 20)
    use_cache_folders()
    if not torch.cuda.is_available() and not args.cpu:
        print(
            f"gpu-check: no CUDA GPU here (torch {torch.__version__}, CUDA build "
            f"{torch.version.cuda}); nothing to check"
        )
        return 0
    device = torch.device("cpu" if args.cpu else "cuda")
    deadline = None if args.budget_s is None else time.time() + args.budget_s
    args.out.mkdir(parents=True, exist_ok=True)
    info = machine(device)
    setup = {"rows": ",".join(names), "steps": args.steps, "budget_s": args.budget_s}
    setup.update(peak_bf16_tflops=peak_tflops(info.get("gpu", "")), peak_source=PEAK_SOURCE)
    report = Report(args.out, info, setup)
    report.write()
    throughput = Throughput(args, rows, report, device)
    for name in names:
        if name == "tests":
            run_gpu_tests(args.out, report, None if deadline is None else deadline - time.time())
        else:
            throughput.run(parse_row(name), deadline)
    report.write()
    print(f"gpu-check: done in {report.data['seconds']} s; {args.out / 'report.md'}")
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
