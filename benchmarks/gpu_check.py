"""The GPU check (`make gpu-check`): on a machine with a CUDA GPU, the gpu-marked tests and the
training throughput of ResNet-50 256x192 per GPU, written to OUT/report.md and report.json.

    python benchmarks/gpu_check.py [--out runs/gpu-check] [--skip-tests] [--quick]
    python benchmarks/gpu_check.py --cpu --quick --skip-tests    # the same code on a CPU

Throughput, bf16 (fp32 on a CPU), channels_last, one GPU, for each batch size:
  a  the training step (forward, loss, backward, Adam) on a batch already on the device
  b  end to end: DALI (`mixed` decoding on the GPU) reading shards, the same step
  c  end to end: the torch backend reading shards with one worker per core, the same step
each without and with torch.compile (b and c with compile at the largest batch only: compiling
takes most of the check's time). Reported: images/s, the data-wait fraction (1 - a/b), peak
memory and model FLOPs utilisation: measured training FLOPs per image (torch's FLOP counter,
forward and backward) x images/s / the GPU's peak dense bf16 rate (PEAK_BF16 below). The
shards are made here from the synthetic generator at the COCO recipe's 384x288 detail.
Without CUDA (and without --cpu) it says so and exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
from train_step import timed  # benchmarks/: a GPU synchronised at both ends

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pose.caches import use_cache_folders  # noqa: E402
from pose.config import load_config  # noqa: E402
from pose.data.backends import build_loader  # noqa: E402
from pose.data.loader import LoaderSpec  # noqa: E402
from pose.engine.deepspeed_adapter import build_engine  # noqa: E402
from pose.engine.distributed import init_distributed  # noqa: E402
from pose.engine.trainer import apply_memory_format, prepare_model, train_step  # noqa: E402
from pose.files import atomic_write  # noqa: E402
from pose.models import build_model  # noqa: E402

# Peak dense (no sparsity) bf16 tensor-core rates in TFLOP/s, from NVIDIA's data sheets (SXM
# parts; PCIe/NVL parts are lower, so MFU on those reads low).
PEAK_BF16 = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0}
PEAK_SOURCE = "NVIDIA data sheets, dense bf16 tensor-core peak (SXM)"


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


def run_gpu_tests(out: Path) -> dict:
    """`pytest -m gpu`: the counts, and the output in OUT/gpu-tests.txt."""
    command = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider"]
    start = time.time()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    atomic_write(out / "gpu-tests.txt", done.stdout + done.stderr)
    last = (done.stdout.strip().splitlines() or [""])[-1]
    return {"exit_code": done.returncode, "summary": last, "seconds": round(time.time() - start)}


def make_shards(out: Path, images: int) -> Path:
    from data_prep.synthetic import generate
    from pose.data.sharding import ShardRequest, shard_dataset

    data = out / "data"
    if not (data / "shards" / "train" / "manifest.json").is_file():
        generate(data, seed=0, train_images=images, val_images=2, progress=False)
        request = ShardRequest(
            annotations=data / "annotations" / "person_keypoints_train.json",
            images=data / "images" / "train",
            out=data / "shards" / "train",
            split="train",
            progress=False,
        )
        shard_dataset(request)
    return data / "shards" / "train"


def training_flops_per_image(cfg, device: torch.device) -> float:
    """Forward and backward FLOPs of one image, counted by torch (multiply-adds x 2)."""
    from torch.utils.flop_counter import FlopCounterMode

    model = build_model(cfg.model, 17).to(device)
    image = torch.randn(1, 3, *cfg.data.image_size, device=device)
    counter = FlopCounterMode(display=False)
    with counter:
        model(image).float().pow(2).mean().backward()
    return float(counter.get_total_flops())


def measure(cfg, batch_size: int, compile_model: bool, source: str, device, steps: int) -> dict:
    """images/s and peak memory of one setting; source: device (a), dali (b) or torch (c)."""
    train = replace(cfg.train, batch_size=batch_size, compile=compile_model)
    data = cfg.data
    if source != "device":
        workers = os.cpu_count() if source == "torch" else data.num_workers
        data = replace(data, backend=source, num_workers=workers)
    torch.manual_seed(0)
    model = prepare_model(build_model(cfg.model, 17), train, device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    engine = build_engine(model, optimizer, None, train, 1, cfg.train.precision)
    apply_memory_format(model, train, device)
    loader = build_loader(LoaderSpec(data, "train", batch_size, device=device))
    epochs = iter(range(10**6))
    batches = iter(())

    def next_batch():
        nonlocal batches
        try:
            return next(batches)
        except StopIteration:
            batches = iter(loader.epoch(next(epochs)))
            return next(batches)

    fixed = next_batch()
    step = (
        (lambda: train_step(engine, fixed, data, train))
        if source == "device"
        else (lambda: train_step(engine, next_batch(), data, train))
    )
    for _ in range(3 if not compile_model else 5):  # compiling happens here
        step()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = timed(step, steps)
    memory = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {
        "source": source,
        "batch": batch_size,
        "compile": compile_model,
        "images_per_s": round(batch_size / seconds, 1),
        "peak_memory_gb": None if memory is None else round(memory, 2),
    }


def throughput(out: Path, device: torch.device, quick: bool) -> dict:
    overrides = ["log.wandb=off", "train.budget_minutes=0", "train.memory_format=channels_last"]
    overrides.append(f"train.precision={'bf16' if device.type == 'cuda' else 'fp32'}")
    if quick:  # the code paths, not the numbers
        overrides += ["model.backbone=resnet18", "data.image_size=[128,96]"]
    shards = make_shards(out, images=16 if quick else 400)
    overrides += [f"data.train_shards={shards}", f"data.val_shards={shards}"]
    cfg = load_config("configs/coco_res50_256x192.yaml", overrides)
    init_distributed(cfg.launch)
    batches = (2,) if quick else (32, 64, 128)
    steps = 2 if quick else 20
    sources = ["device", "dali" if device.type == "cuda" or quick else None, "torch"]
    sources = [s for s in sources if s]
    rows = []
    for compile_model in (False, True) if not quick else (False,):
        for batch in batches:
            for source in sources:
                if compile_model and source != "device" and batch != batches[-1]:
                    continue
                row = measure(cfg, batch, compile_model, source, device, steps)
                rows.append(row)
                print(f"gpu-check: {describe(row)}", flush=True)
    add_ratios(rows)
    flops = training_flops_per_image(cfg, device)
    peak = peak_tflops(machine(device).get("gpu", ""))
    for row in rows:
        achieved = flops * row["images_per_s"] / 1e12
        row["tflops"] = round(achieved, 1)
        row["mfu"] = None if peak is None else round(achieved / peak, 3)
    setup = f"{cfg.model.backbone} {'x'.join(map(str, cfg.data.image_size))} {cfg.train.precision}"
    return {
        "setup": setup + ", channels_last",
        "training_gflops_per_image": round(flops / 1e9, 2),
        "peak_bf16_tflops": peak,
        "peak_source": PEAK_SOURCE,
        "rows": rows,
    }


def add_ratios(rows: list[dict]) -> None:
    """Each end-to-end row's share of the device-batch rate, and its data-wait fraction."""
    device = {
        (r["batch"], r["compile"]): r["images_per_s"] for r in rows if r["source"] == "device"
    }
    for row in rows:
        base = device.get((row["batch"], row["compile"]))
        if row["source"] != "device" and base:
            row["vs_device"] = round(row["images_per_s"] / base, 3)
            row["data_wait"] = round(max(0.0, 1 - row["images_per_s"] / base), 3)


def describe(row: dict) -> str:
    memory = f", {row['peak_memory_gb']} GB" if row.get("peak_memory_gb") is not None else ""
    compiled = " compiled" if row["compile"] else ""
    return (
        f"{row['source']:>6} batch {row['batch']:>3}{compiled}: {row['images_per_s']} img/s{memory}"
    )


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = ["# GPU check", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in m.items()]
    if "tests" in report:
        t = report["tests"]
        lines += ["", f"Tests (`pytest -m gpu`): {t['summary']} (exit {t['exit_code']})"]
    bench = report.get("throughput")
    if bench:
        lines += ["", f"Throughput: {bench['setup']}; {bench['training_gflops_per_image']} "]
        lines[-1] += f"training GFLOPs per image; peak {bench['peak_bf16_tflops']} TFLOP/s "
        lines[-1] += f"({bench['peak_source']})"
        lines += [
            "",
            "| source | batch | compile | images/s | vs a | data wait | memory GB | MFU |",
        ]
        lines += ["|---|---|---|---|---|---|---|---|"]
        for r in bench["rows"]:
            lines.append(
                f"| {r['source']} | {r['batch']} | {r['compile']} | {r['images_per_s']} | "
                f"{r.get('vs_device', '')} | {r.get('data_wait', '')} | "
                f"{r['peak_memory_gb'] or ''} | {r['mfu'] or ''} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/gpu-check"))
    parser.add_argument("--skip-tests", action="store_true", help="only the throughput")
    parser.add_argument("--quick", action="store_true", help="small sizes: the code paths only")
    parser.add_argument("--cpu", action="store_true", help="run on the CPU (a smoke test)")
    args = parser.parse_args(argv)
    use_cache_folders()
    if not torch.cuda.is_available() and not args.cpu:
        print(
            f"gpu-check: no CUDA GPU here (torch {torch.__version__}, CUDA build "
            f"{torch.version.cuda}); nothing to check"
        )
        return 0
    device = torch.device("cpu" if args.cpu else "cuda")
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    report = {"machine": machine(device)}
    if not args.skip_tests:
        report["tests"] = run_gpu_tests(args.out)
        print(f"gpu-check: tests: {report['tests']['summary']}", flush=True)
    report["throughput"] = throughput(args.out, device, args.quick)
    report["seconds"] = round(time.time() - start)
    atomic_write(args.out / "report.json", json.dumps(report, indent=1) + "\n")
    atomic_write(args.out / "report.md", markdown(report))
    print(f"gpu-check: done in {report['seconds']} s; {args.out / 'report.md'}")
    failed = report.get("tests", {}).get("exit_code", 0) not in (0, 5)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
