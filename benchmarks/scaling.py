"""Scaling, measured small and modelled large.

Measured on slurm/local-cluster.sh's namespace hosts (each its own network namespace on one
bridge, one gloo rank per host, one intra-op thread each), for 1, 2 and 3 hosts:
- all-reduce time against message size over the bridge, unshaped and with every host's link
  shaped by `tc` to 10 and 1 Gbit/s; bus bandwidth = 2 (W-1)/W x bytes / time (what a ring
  all-reduce moves per rank);
- the training step of the demo model at a fixed per-host batch, split into data wait (the
  real loader), compute (forward + backward, no communication) and the gradient all-reduce
  (one flat fp32 buffer), with the wait for the slowest rank apart; plus the step the model
  below predicts from the parts and the measured bus bandwidth.

Modelled (printed as a table, formulas in BENCHMARKS.md): images/s and scaling efficiency of
ResNet-50 256x192 (Simple Baselines) for 8 to 512 GPUs, 8 a node on NVLink, nodes on
InfiniBand, and the shard read rate the file system must sustain.

    python benchmarks/scaling.py [--hosts 1 2 3] [--rates none 10gbit 1gbit] [--json OUT]
    python benchmarks/scaling.py --model-only [--json OUT]

Needs root (network namespaces) and Slurm installed for local-cluster.sh; the cluster is
started in a temporary folder and stopped afterwards.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "slurm" / "local-cluster.sh"
SIZES = [2**k for k in range(16, 27, 2)]  # 64 KiB .. 64 MiB
BRIDGE_NET = "198.18.0"


# ------------------------------------------------------------------------------------------
# The model
# ------------------------------------------------------------------------------------------


def ring_allreduce_s(grad_bytes: float, ranks: int, bus_bytes_per_s: float, hop_s: float) -> float:
    """Ring all-reduce: each rank sends and receives 2 (W-1)/W of the buffer, in 2 (W-1) steps
    of one hop latency each."""
    if ranks == 1:
        return 0.0
    return 2 * (ranks - 1) / ranks * grad_bytes / bus_bytes_per_s + 2 * (ranks - 1) * hop_s


def step_s(
    compute_s: float, backward_share: float, allreduce_s: float, overlap: bool, data_s: float = 0
) -> float:
    """A training step: compute (forward + backward), plus the all-reduce where it does not
    hide behind the backward pass (DDP/DeepSpeed buckets start reducing while later layers'
    gradients are still computed), plus data wait."""
    hidden = backward_share * compute_s if overlap else 0.0
    return compute_s + max(0.0, allreduce_s - hidden) + data_s


# Published figures the large-scale model uses (see BENCHMARKS.md for the sources).
A100_RESNET50_224_AMP = 2470  # img/s, 1 GPU, NVIDIA DeepLearningExamples RN50 v1.5 (PyTorch)
NVLINK_BUS = 300e9  # B/s per direction per GPU that NCCL reaches in practice on H100/H200
#                     NVLink 4 (900 GB/s total, 450 per direction; NCCL bus bw ~ 2/3 of it)
IB_NDR_PER_GPU = 50e9  # B/s: one 400 Gb/s NDR port per GPU (DGX H100/H200: 8 ConnectX-7)
IB_EFFICIENCY = 0.8  # share of line rate NCCL's ring reaches between nodes
HOP_LATENCY = {"nvlink": 3e-6, "ib": 8e-6}  # s per ring step
GPUS_PER_NODE = 8


def large_scale(
    per_gpu_images_s: float,
    batch_per_gpu: int,
    grad_bytes: float,
    bytes_per_image: float,
    gpus_list=(8, 16, 32, 64, 128, 256, 512),
) -> list[dict]:
    """Predicted images/s, efficiency and file-system read rate for each GPU count."""
    compute = batch_per_gpu / per_gpu_images_s
    rows = []
    for gpus in gpus_list:
        if gpus <= GPUS_PER_NODE:
            bus, hop = NVLINK_BUS, HOP_LATENCY["nvlink"]
        else:  # NCCL's ring crosses nodes: the slowest link sets the pace
            bus, hop = IB_NDR_PER_GPU * IB_EFFICIENCY, HOP_LATENCY["ib"]
        reduce = ring_allreduce_s(grad_bytes, gpus, bus, hop)
        step = step_s(compute, 2 / 3, reduce, overlap=True)
        exposed = step_s(compute, 2 / 3, reduce, overlap=False)
        images = gpus * batch_per_gpu / step
        rows.append(
            {
                "gpus": gpus,
                "nodes": math.ceil(gpus / GPUS_PER_NODE),
                "allreduce_ms": reduce * 1e3,
                "step_ms": step * 1e3,
                "step_no_overlap_ms": exposed * 1e3,
                "images_s": images,
                "efficiency": images / (gpus * per_gpu_images_s),
                "efficiency_no_overlap": gpus * batch_per_gpu / exposed / (gpus * per_gpu_images_s),
                "read_mb_s": images * bytes_per_image / 1e6,
                "global_batch": gpus * batch_per_gpu,
                "coco_epoch_s": 149_813 / images,
            }
        )
    return rows


def model_costs() -> dict:
    """Multiply-adds of the anchor (torchvision's ResNet-50 classifier at 224x224) and of the
    pose model (Simple Baselines ResNet-50 at 256x192, COCO's 17 joints), and the pose model's
    parameters, all from one counter (pose.models.summary)."""
    import torch
    import torchvision

    from pose.config import ModelConfig
    from pose.data.layout import COCO_17
    from pose.models.summary import forward_gmacs, summarize

    with torch.device("meta"):
        classifier = torchvision.models.resnet50(weights=None)
    anchor, _ = forward_gmacs(classifier, (224, 224))
    pose = summarize(ModelConfig(backbone="resnet50"), COCO_17.num_joints, (256, 192))
    return {
        "resnet50_224_gmacs": anchor,
        "pose_gmacs": pose["gmacs"],
        "pose_params": pose["params"],
    }


def model_table(bytes_per_image: float, grad_bytes_per_param: int = 4) -> dict:
    """The large-scale prediction for ResNet-50 256x192 bf16, 32 images per GPU (the
    reference's batch), from an A100 anchor scaled by multiply-adds (the project's one count,
    pose.models.summary) and by an H200/A100 factor."""
    costs = model_costs()
    a100 = A100_RESNET50_224_AMP * costs["resnet50_224_gmacs"] / costs["pose_gmacs"]
    h200_factor = 2.0  # assumed: bf16 convnet training, H100/H200 over A100 (not measured)
    per_gpu = a100 * h200_factor
    grad_bytes = costs["pose_params"] * grad_bytes_per_param
    return {
        **costs,
        "per_gpu_images_s": per_gpu,
        "a100_images_s": a100,
        "grad_bytes": grad_bytes,
        "bytes_per_image": bytes_per_image,
        "rows": large_scale(per_gpu, 32, grad_bytes, bytes_per_image),
    }


def shard_bytes_per_image(folder: Path) -> float:
    from pose.data.shards import ShardSet

    """Mean bytes a training sample takes in the shards (what the file system must deliver)."""
    shards = ShardSet.open(folder)
    return sum(t.stat().st_size for t in shards.tars) / max(1, shards.num_samples)


# ------------------------------------------------------------------------------------------
# The measurement: one worker per host
# ------------------------------------------------------------------------------------------


def worker(args) -> None:
    """One rank: the all-reduce sweep and the split training step; rank 0 prints JSON."""
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if world > 1:
        dist.init_process_group("gloo", rank=rank, world_size=world)
    result = {"world": world}
    if world > 1:
        result["allreduce"] = allreduce_sweep(world, args.reps)
    if args.steps:
        result["step"] = split_step(rank, world, args)
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    if rank == 0:
        print("RESULT " + json.dumps(result), flush=True)


def allreduce_sweep(world: int, reps: int) -> list[dict]:
    import torch
    import torch.distributed as dist

    rows = []
    for size in SIZES:
        buffer = torch.ones(size // 4)
        dist.all_reduce(buffer)  # warm the connections
        times = []
        for _ in range(reps):
            dist.barrier()
            start = time.perf_counter()
            dist.all_reduce(buffer)
            times.append(time.perf_counter() - start)
        seconds = statistics.median(times)
        bus = 2 * (world - 1) / world * size / seconds
        rows.append({"bytes": size, "seconds": seconds, "bus_bytes_s": bus})
    return rows


def split_step(rank: int, world: int, args) -> dict:
    """Median seconds of data wait, compute and gradient all-reduce over `args.steps` steps
    of the demo model at `args.batch` images per host."""
    import torch
    import torch.distributed as dist

    from pose.config import layer_overrides, load_config
    from pose.data.backends import build_loader
    from pose.data.codec import HeatmapCodec, heatmap_size
    from pose.data.loader import LoaderSpec
    from pose.engine.loss import joints_mse_loss
    from pose.models import build_model

    ours = [f"train.batch_size={args.batch}", "data.num_workers=0"]
    cfg = load_config(ROOT / "configs" / "demo.yaml", layer_overrides(ours, args.overrides))
    loader = build_loader(LoaderSpec(cfg.data, "train", args.batch, rank, world))
    torch.manual_seed(0)
    model = build_model(cfg.model, loader.layout.num_joints)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    codec = HeatmapCodec.of(cfg.data, heatmap_size(cfg.data.image_size, cfg.model.output_stride))
    params = [p for p in model.parameters() if p.requires_grad]
    batches = loader.epoch(0)
    parts = {"data": [], "compute": [], "wait": [], "allreduce": [], "step": []}
    for n in range(args.steps + 2):  # two warm-up steps
        t0 = time.perf_counter()
        batch = next(batches)
        t1 = time.perf_counter()
        heatmaps, weights = codec.encode(batch["keypoints"])
        loss = joints_mse_loss(model(batch["image"]), heatmaps, weights)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        t2 = time.perf_counter()
        if world > 1:
            dist.barrier()  # waiting for the slowest rank, apart from the transfer
        t2b = time.perf_counter()
        if world > 1:
            flat = torch.cat([p.grad.reshape(-1) for p in params])
            dist.all_reduce(flat)
            flat /= world
            offset = 0
            for p in params:
                p.grad.copy_(flat[offset : offset + p.numel()].view_as(p))
                offset += p.numel()
        t3 = time.perf_counter()
        optimizer.step()
        t4 = time.perf_counter()
        if n >= 2:
            parts["data"].append(t1 - t0)
            parts["compute"].append(t2 - t1 + t4 - t3)
            parts["wait"].append(t2b - t2)
            parts["allreduce"].append(t3 - t2b)
            parts["step"].append(t4 - t0)
    batches.close()
    grad_bytes = 4 * sum(p.numel() for p in params)
    return {k: statistics.median(v) for k, v in parts.items()} | {"grad_bytes": grad_bytes}


# ------------------------------------------------------------------------------------------
# The launcher
# ------------------------------------------------------------------------------------------


def cluster(state: Path, *args, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "POSESCALE_SLURM_DIR": str(state)}
    done = subprocess.run(["bash", str(CLUSTER), *args], env=env, capture_output=True, text=True)
    if check and done.returncode != 0:
        raise RuntimeError(f"local-cluster.sh {' '.join(args)}: {done.stderr.strip()}")
    return done


def shape(state: Path, hosts: int, rate: str) -> None:
    """Every host's egress (its eth0) limited to `rate` ('none': unlimited)."""
    for h in range(1, hosts + 1):
        cluster(state, "exec", f"h{h}", "tc", "qdisc", "del", "dev", "eth0", "root", check=False)
        if rate != "none":
            tbf = ["tc", "qdisc", "add", "dev", "eth0", "root", "tbf", "rate", rate]
            cluster(state, "exec", f"h{h}", *tbf, "burst", "512kb", "latency", "200ms")


def measure(state: Path, world: int, args, port: int) -> dict:
    """`world` workers, one per host h1..hW, rendezvous at h1."""
    command = [sys.executable, str(Path(__file__).resolve()), "--worker"]
    command += ["--steps", str(args.steps), "--batch", str(args.batch), "--reps", str(args.reps)]
    procs = []
    for rank in range(world):
        env = {
            **os.environ,
            "POSESCALE_SLURM_DIR": str(state),
            "RANK": str(rank),
            "WORLD_SIZE": str(world),
            "MASTER_ADDR": f"{BRIDGE_NET}.11",
            "MASTER_PORT": str(port),
            "OMP_NUM_THREADS": "1",
        }
        cmd = ["bash", str(CLUSTER), "exec", f"h{rank + 1}", *command, "--", *args.overrides]
        procs.append(subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, text=True))
    outputs = [p.communicate(timeout=1800)[0] for p in procs]
    if any(p.returncode for p in procs):
        raise RuntimeError(f"a worker failed: {[p.returncode for p in procs]}")
    line = next(x for x in outputs[0].splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])


def run_measurements(args) -> dict:
    measured: dict = {"steps": {}, "allreduce": {}}
    with tempfile.TemporaryDirectory(prefix="posescale-scaling-") as folder:
        state = Path(folder) / "cluster"
        cluster(state, "start", "--hosts", str(max(args.hosts)))
        try:
            port = 29600
            for world in args.hosts:  # the step split, links unshaped
                port += 1
                got = measure(state, world, args, port)
                measured["steps"][str(world)] = got["step"]
                print(f"scaling: {world} host(s): {fmt_step(got['step'])}", flush=True)
            quick = argparse.Namespace(**{**vars(args), "steps": 0})
            for rate in args.rates:  # all-reduce bandwidth, 2 and more hosts
                shape(state, max(args.hosts), rate)
                for world in [w for w in args.hosts if w > 1]:
                    port += 1
                    rows = measure(state, world, quick, port)["allreduce"]
                    measured["allreduce"][f"{rate}/{world}"] = rows
                    largest = rows[-1]["bus_bytes_s"]  # small ones fit in tbf's burst
                    print(f"scaling: link {rate}, {world} hosts: bus {largest / 1e6:.0f} MB/s")
            shape(state, max(args.hosts), "none")
        finally:
            cluster(state, "stop", check=False)
    return measured


def fmt_step(s: dict) -> str:
    return (
        f"step {s['step'] * 1e3:.0f} ms = data {s['data'] * 1e3:.0f} + compute "
        f"{s['compute'] * 1e3:.0f} + wait for the slowest rank {s['wait'] * 1e3:.0f} + "
        f"all-reduce {s['allreduce'] * 1e3:.0f} ms"
    )


def check_model(measured: dict) -> list[dict]:
    """The model's step for each host count from the measured compute and data time and the
    all-reduce predicted from the measured bus bandwidth (largest message, unshaped), against
    the measured step. No overlap here: the benchmark reduces after the backward pass."""
    rows = []
    for world, s in measured["steps"].items():
        world = int(world)
        rows_none = measured["allreduce"].get(f"none/{world}", [])
        bus = rows_none[-1]["bus_bytes_s"] if rows_none else math.inf  # the largest message
        predicted_reduce = ring_allreduce_s(s["grad_bytes"], world, bus, 0.0)
        predicted = step_s(s["compute"], 2 / 3, predicted_reduce, False, s["data"] + s["wait"])
        rows.append(
            {
                "hosts": world,
                "measured_step_ms": s["step"] * 1e3,
                "predicted_step_ms": predicted * 1e3,
                "measured_allreduce_ms": s["allreduce"] * 1e3,
                "predicted_allreduce_ms": predicted_reduce * 1e3,
                "images_s": world * s.get("batch", 0) / s["step"] if s.get("batch") else None,
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--hosts", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--rates", nargs="+", default=["none", "10gbit", "1gbit"])
    parser.add_argument("--steps", type=int, default=8, help="timed training steps per size")
    parser.add_argument("--batch", type=int, default=16, help="images per host and step")
    parser.add_argument("--reps", type=int, default=5, help="all-reduces per message size")
    parser.add_argument("--model-only", action="store_true", help="only the large-scale model")
    parser.add_argument("--shards", default="data/demo/shards/train", help="for bytes/image")
    parser.add_argument("--json", help="write everything here")
    parser.add_argument("overrides", nargs="*", help="config overrides for the step")
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    shards = ROOT / args.shards
    per_image = shard_bytes_per_image(shards) if shards.is_dir() else 20e3
    report: dict = {"bytes_per_image_demo_shards": per_image}
    if not args.model_only:
        measured = run_measurements(args)
        for s in measured["steps"].values():
            s["batch"] = args.batch
        report["measured"] = measured
        report["model_check"] = check_model(measured)
        for row in report["model_check"]:
            print(
                f"scaling: {row['hosts']} host(s): measured step {row['measured_step_ms']:.0f} "
                f"ms, model {row['predicted_step_ms']:.0f} ms (all-reduce measured "
                f"{row['measured_allreduce_ms']:.1f}, model {row['predicted_allreduce_ms']:.1f})"
            )
    # COCO crops at 256x192 are about 4x the pixels of the demo's 128x96 (JPEG bytes scale
    # about with pixels); the large-scale table uses that estimate.
    report["large_scale"] = model_table(bytes_per_image=4 * per_image)
    for row in report["large_scale"]["rows"]:
        print(
            f"model: {row['gpus']:4d} GPUs ({row['nodes']:3d} nodes): "
            f"{row['images_s']:9.0f} img/s, efficiency {row['efficiency']:.3f} "
            f"({row['efficiency_no_overlap']:.3f} without overlap), all-reduce "
            f"{row['allreduce_ms']:.1f} ms, read {row['read_mb_s']:.0f} MB/s, "
            f"COCO epoch {row['coco_epoch_s']:.1f} s"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
