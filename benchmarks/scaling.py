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

With --overlap, on 2 hosts: a whole training step through the DeepSpeed engine with
engine.overlap_comm off and on, taking turns, at each --rates link, beside one all-reduce of the
gradients' size.

Modelled (printed as tables, formulas in BENCHMARKS.md): images/s and scaling efficiency of
Simple Baselines ResNet-50 and ViTPose-B/L/H at 256x192 for 8 to 512 GPUs, 8 a node on NVLink,
nodes rail-optimised on InfiniBand, and the shard read rate the file system must sustain.

    python benchmarks/scaling.py [--hosts 1 2 3] [--rates none 10gbit 1gbit] [--json OUT]
    python benchmarks/scaling.py --model-only [--json OUT]
    python benchmarks/scaling.py --overlap [--rates none 1gbit] [--json OUT]

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
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "slurm" / "local-cluster.sh"
SIZES = [2**k for k in range(16, 27, 2)]  # 64 KiB .. 64 MiB


# ------------------------------------------------------------------------------------------
# The model
# ------------------------------------------------------------------------------------------


def ring_allreduce_s(
    grad_bytes: float,
    ranks: int,
    bus_bytes_per_s: float,
    hop_s: float,
    crossing_steps: int = 0,
    crossing_hop_s: float = 0.0,
) -> float:
    """Ring all-reduce: each rank sends and receives 2 (W-1)/W of the buffer, in 2 (W-1) steps
    of one hop latency each; `crossing_steps` of them cross between nodes at
    `crossing_hop_s`."""
    if ranks == 1:
        return 0.0
    steps = 2 * (ranks - 1)
    latency = (steps - crossing_steps) * hop_s + crossing_steps * crossing_hop_s
    return 2 * (ranks - 1) / ranks * grad_bytes / bus_bytes_per_s + latency


def tree_allreduce_s(
    grad_bytes: float, nodes: int, gpus_per_node: int, bus_bytes_per_s: float, hops: dict
) -> float:
    """NCCL's tree all-reduce: a reduction up and a broadcast down a binary tree of the nodes,
    a chain of the GPUs inside each. Each rank moves about twice the buffer, as a ring does at
    large W, but the latency grows with log2 of the nodes, not with the GPUs: it wins for
    small messages across many nodes."""
    depth = math.ceil(math.log2(nodes)) if nodes > 1 else 0
    latency = 2 * (depth * hops["ib"] + (gpus_per_node - 1) * hops["nvlink"])
    return 2 * grad_bytes / bus_bytes_per_s + latency


@dataclass(frozen=True)
class Cluster:
    """Nodes of `gpus_per_node` GPUs on NVLink, joined by one NIC per GPU (rail-optimised:
    NIC k of every node on one switch, and NCCL runs one ring per NIC, so a node's traffic
    between nodes spreads over all its NICs)."""

    gpus_per_node: int = 8
    nvlink_bus: float = 300e9  # B/s NCCL's bus bandwidth inside an H100/H200 node
    nic_bytes_s: float = 50e9  # one 400 Gb/s NDR InfiniBand port per GPU
    nic_efficiency: float = 0.8  # share of line rate NCCL reaches between nodes
    hops: tuple = (("nvlink", 3e-6), ("ib", 8e-6))  # s per step on each kind of link

    def allreduce_s(self, grad_bytes: float, gpus: int) -> tuple[float, str]:
        """The faster of NCCL's ring and tree for one message (NCCL picks by size), and its
        name."""
        if gpus == 1:
            return 0.0, "-"
        hops = dict(self.hops)
        nodes = math.ceil(gpus / self.gpus_per_node)
        per_node = min(gpus, self.gpus_per_node)
        bus = self.nvlink_bus
        if nodes > 1:  # ring k leaves each node through NIC k: a rank's 2 (W-1)/W x bytes
            # leave the node spread over all its NICs, so the bus rate is theirs together
            nics = self.gpus_per_node * self.nic_bytes_s * self.nic_efficiency
            bus = min(bus, nics)
        crossing = 2 * (nodes - 1) if nodes > 1 else 0
        ring = ring_allreduce_s(grad_bytes, gpus, bus, hops["nvlink"], crossing, hops["ib"])
        tree = tree_allreduce_s(grad_bytes, nodes, per_node, bus, hops)
        return (ring, "ring") if ring <= tree else (tree, "tree")


def exposed_reduction_s(
    backward_s: float, grad_bytes: float, bucket_bytes: float, reduce_s, overlap: bool
) -> float:
    """The all-reduce time a step waits for after its backward pass. Without overlap, all of
    it. With overlap (DDP's reducer, DeepSpeed's overlap_comm), the gradients fill buckets of
    `bucket_bytes` evenly over the backward pass, each bucket's all-reduce starts when it is
    full and the previous one is done (one communication stream), and what runs past the
    backward pass shows."""
    if not overlap:
        return reduce_s(grad_bytes)
    buckets = max(1, math.ceil(grad_bytes / bucket_bytes))
    done = 0.0
    for i in range(1, buckets + 1):
        size = min(bucket_bytes, grad_bytes - (i - 1) * bucket_bytes)
        done = max(done, backward_s * i / buckets) + reduce_s(size)
    return max(0.0, done - backward_s)


# Published figures the large-scale model uses (see BENCHMARKS.md for the sources).
A100_RESNET50_224_AMP = 2470  # img/s, 1 GPU, NVIDIA DeepLearningExamples RN50 v1.5 (PyTorch)
A100_RESNET50_8GPU_EFFICIENCY = 16621 / (8 * 2470)  # the same table, 8 GPUs: 0.84
H200_OVER_A100 = 2.0  # assumed: bf16 training, H100/H200 over A100 (not measured)
BACKWARD_SHARE = 2 / 3  # of forward + backward compute (backward: two products per forward one)
BUCKET_BYTES = 25 * 2**20  # engine.bucket_mb's default
COCO_PEOPLE = 149_813
# the models of the table: backbone, model overrides, batch per GPU (their recipes')
MODELS = {
    "Simple Baselines R-50": ("resnet50", {}, 32),
    "ViTPose-B": ("vitpose_b", {"deconv_layers": 2}, 64),
    "ViTPose-L": ("vitpose_l", {"deconv_layers": 2}, 64),
    "ViTPose-H": ("vitpose_h", {"deconv_layers": 2}, 64),
}


def large_scale(
    per_gpu_images_s: float,
    batch_per_gpu: int,
    grad_bytes: float,
    bytes_per_image: float,
    cluster: Cluster = Cluster(),
    overhead: float = 0.0,
    gpus_list=(8, 16, 32, 64, 128, 256, 512),
    bucket_bytes: float = BUCKET_BYTES,
) -> list[dict]:
    """Predicted images/s, efficiency and file-system read rate for each GPU count. `overhead`:
    a share of the compute time every multi-GPU step adds besides communication (input
    pipeline, stragglers, launch gaps), fitted to a measured single-node point."""
    compute = batch_per_gpu / per_gpu_images_s
    backward = BACKWARD_SHARE * compute
    rows = []
    for gpus in gpus_list:
        reduce_s = lambda size, gpus=gpus: cluster.allreduce_s(size, gpus)[0]  # noqa: E731
        whole, algorithm = cluster.allreduce_s(grad_bytes, gpus)
        _, bucket_algorithm = cluster.allreduce_s(min(bucket_bytes, grad_bytes), gpus)
        shown = exposed_reduction_s(backward, grad_bytes, bucket_bytes, reduce_s, True)
        serial = exposed_reduction_s(backward, grad_bytes, bucket_bytes, reduce_s, False)
        step = compute * (1 + overhead) + shown
        images = gpus * batch_per_gpu / step
        rows.append(
            {
                "gpus": gpus,
                "nodes": math.ceil(gpus / cluster.gpus_per_node),
                "allreduce_ms": whole * 1e3,
                "allreduce_algorithm": algorithm,
                "bucket_algorithm": bucket_algorithm,
                "exposed_ms": shown * 1e3,
                "step_ms": step * 1e3,
                "images_s": images,
                "efficiency": images / (gpus * per_gpu_images_s),
                "efficiency_no_overlap": compute / (compute * (1 + overhead) + serial),
                "read_mb_s": images * bytes_per_image / 1e6,
                "global_batch": gpus * batch_per_gpu,
                "coco_epoch_s": COCO_PEOPLE / images,
            }
        )
    return rows


def model_costs(backbone: str = "resnet50", **model) -> dict:
    """Multiply-adds of the anchor (torchvision's ResNet-50 classifier at 224x224) and of a pose
    model at 256x192 with COCO's 17 joints, and its parameters, all from one counter
    (pose.models.summary)."""
    import torch
    import torchvision

    from pose.config import ModelConfig
    from pose.data.layout import COCO_17
    from pose.models.summary import forward_gmacs, summarize

    with torch.device("meta"):
        classifier = torchvision.models.resnet50(weights=None)
    anchor, _ = forward_gmacs(classifier, (224, 224))
    pose = summarize(ModelConfig(backbone=backbone, **model), COCO_17.num_joints, (256, 192))
    return {
        "resnet50_224_gmacs": anchor,
        "pose_gmacs": pose["gmacs"],
        "pose_params": pose["params"],
    }


def single_node_overhead(cluster: Cluster) -> float:
    """The overhead share that makes the model give NVIDIA's measured 8-GPU efficiency of
    ResNet-50 (A100, AMP, 256 images per GPU, NVLink 3 at about 2/3 of H100's bus rate)."""
    anchor = cluster.__class__(nvlink_bus=cluster.nvlink_bus * 2 / 3)
    grad_bytes = 25.557e6 * 4  # torchvision's ResNet-50, fp32 gradients
    (row,) = large_scale(A100_RESNET50_224_AMP, 256, grad_bytes, 0, anchor, gpus_list=(8,))
    compute_plus_comm = 1 / row["efficiency"]
    return 1 / A100_RESNET50_8GPU_EFFICIENCY - compute_plus_comm


def model_table(bytes_per_image: float, grad_bytes_per_param: int = 4) -> dict:
    """The large-scale prediction for each model of MODELS at 256x192 in bf16 on H200 nodes:
    per-GPU speed from an A100 anchor scaled by multiply-adds (the project's one count,
    pose.models.summary) and an H200/A100 factor; communication from the cluster model; and
    the same with the overhead NVIDIA's single-node measurement implies."""
    cluster = Cluster()
    overhead = single_node_overhead(cluster)
    tables = {}
    for name, (backbone, model, batch) in MODELS.items():
        costs = model_costs(backbone, **model)
        a100 = A100_RESNET50_224_AMP * costs["resnet50_224_gmacs"] / costs["pose_gmacs"]
        per_gpu = a100 * H200_OVER_A100
        grad_bytes = costs["pose_params"] * grad_bytes_per_param
        tables[name] = {
            **costs,
            "batch_per_gpu": batch,
            "per_gpu_images_s": per_gpu,
            "a100_images_s": a100,
            "grad_bytes": grad_bytes,
            "rows": large_scale(per_gpu, batch, grad_bytes, bytes_per_image, cluster),
            "rows_with_overhead": large_scale(
                per_gpu, batch, grad_bytes, bytes_per_image, cluster, overhead
            ),
        }
    return {"bytes_per_image": bytes_per_image, "overhead": overhead, "models": tables}


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

    from pose.config import LaunchConfig
    from pose.distributed import init_distributed

    torch.set_num_threads(1)
    env = init_distributed(LaunchConfig(dist_backend="gloo"))
    rank, world = env.rank, env.world_size
    result = {"world": world}
    if world > 1 and args.reps:
        result["allreduce"] = allreduce_sweep(world, args.reps)
    if args.steps:
        result["step"] = split_step(rank, world, args)
    if args.overlap_rounds:
        result["overlap"] = overlap_step(env, args)
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


def overlap_step(env, args) -> dict:
    """Median seconds of a whole training step through the DeepSpeed engine (forward, backward
    with the gradient reduction, optimizer step) of the demo model on one fixed batch, with
    engine.overlap_comm off (reduced after the backward pass) and on, the two taking turns; and
    of one all-reduce of the gradients' size alone."""
    import dataclasses

    import torch
    import torch.distributed as dist

    from pose.config import layer_overrides, load_config
    from pose.data.backends import build_loader
    from pose.data.codec import HeatmapCodec, heatmap_size
    from pose.data.loader import LoaderSpec
    from pose.engine.build import build_training
    from pose.engine.loss import joints_mse_loss
    from pose.timing import interleaved

    rank, world = env.rank, env.world_size
    ours = [f"train.batch_size={args.batch}", "data.num_workers=0", "optimizer.lr=1e-4"]
    ours.append("engine.precision=fp32")
    cfg = load_config(ROOT / "configs" / "demo.yaml", layer_overrides(ours, args.overrides))
    loader = build_loader(LoaderSpec(cfg.data, "train", args.batch, rank, world))
    batches = loader.epoch(0)
    batch = next(batches)
    batches.close()
    codec = HeatmapCodec.of(cfg.data, heatmap_size(cfg.data.image_size, cfg.model.output_stride))
    heatmaps, weights = codec.encode(batch["keypoints"])
    variants = {}
    for overlap in (False, True):
        torch.manual_seed(0)
        variant = dataclasses.replace(
            cfg, engine=dataclasses.replace(cfg.engine, overlap_comm=overlap)
        )
        training = build_training(variant, loader.layout.num_joints, env)
        engine, model = training.engine, training.model

        def step(engine=engine) -> None:
            engine.backward(joints_mse_loss(engine(batch["image"]), heatmaps, weights))
            engine.step()

        variants["overlap" if overlap else "after_backward"] = step
    grad_elements = sum(p.numel() for p in model.parameters() if p.requires_grad)
    flat = torch.ones(grad_elements)
    variants["allreduce_only"] = lambda: dist.all_reduce(flat) if world > 1 else None
    got = interleaved(variants, steps=args.overlap_steps, rounds=args.overlap_rounds, warmup=2)
    return got | {"grad_bytes": 4 * grad_elements, "batch": args.batch}


def run_overlap(args) -> dict:
    """The overlap measurement: two hosts, each link unshaped and shaped to each rate."""
    results = {}
    with tempfile.TemporaryDirectory(prefix="posescale-overlap-") as folder:
        state = Path(folder) / "cluster"
        cluster(state, "start", "--hosts", "2")
        try:
            port = 29700
            for rate in args.rates:
                shape(state, 2, rate)
                port += 1
                quick = argparse.Namespace(**{**vars(args), "steps": 0, "reps": 0})
                got = measure(state, 2, quick, port)["overlap"]
                results[rate] = got
                print(
                    f"overlap: link {rate}: step {got['after_backward'] * 1e3:.0f} ms reduced "
                    f"after backward, {got['overlap'] * 1e3:.0f} ms overlapped "
                    f"({got['after_backward'] / got['overlap']:.2f}x); the all-reduce alone "
                    f"{got['allreduce_only'] * 1e3:.0f} ms",
                    flush=True,
                )
            shape(state, 2, "none")
        finally:
            cluster(state, "stop", check=False)
    return results


# ------------------------------------------------------------------------------------------
# The launcher
# ------------------------------------------------------------------------------------------


def cluster(state: Path, *args, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "POSESCALE_SLURM_DIR": str(state)}
    done = subprocess.run(["bash", str(CLUSTER), *args], env=env, capture_output=True, text=True)
    if check and done.returncode != 0:
        raise RuntimeError(f"local-cluster.sh {' '.join(args)}: {done.stderr.strip()}")
    return done


def host_address(state: Path, host: str) -> str:
    """A cluster host's address (local-cluster.sh picks a free /24 of 198.18.0.0/15)."""
    for line in (state / "etc" / "etc-hosts").read_text().splitlines():
        fields = line.split()
        if fields[1:] == [host]:
            return fields[0]
    raise RuntimeError(f"local-cluster.sh: no address for {host} in {state}")


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
    command += ["--overlap-rounds", str(args.overlap_rounds)]
    command += ["--overlap-steps", str(args.overlap_steps)]
    procs = []
    for rank in range(world):
        env = {
            **os.environ,
            "POSESCALE_SLURM_DIR": str(state),
            "RANK": str(rank),
            "WORLD_SIZE": str(world),
            "LOCAL_RANK": "0",  # one rank per host (DeepSpeed's engine asks)
            "MASTER_ADDR": host_address(state, "h1"),
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
        predicted = s["compute"] + predicted_reduce + s["data"] + s["wait"]
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
    parser.add_argument(
        "--overlap",
        action="store_true",
        help="only the overlap measurement: 2 hosts, a DeepSpeed step with engine.overlap_comm "
        "off and on at each --rates link",
    )
    parser.add_argument("--overlap-rounds", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--overlap-steps", type=int, default=2, help="steps per turn")
    parser.add_argument("--shards", default="data/demo/shards/train", help="for bytes/image")
    parser.add_argument("--json", help="write everything here")
    parser.add_argument("overrides", nargs="*", help="config overrides for the step")
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    if args.overlap:
        args.overlap_rounds = args.overlap_rounds or 5
        report = {"overlap": run_overlap(args), "command": sys.argv}
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=1))
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
    print(
        f"model: overhead fitted to NVIDIA's 8-GPU point: {report['large_scale']['overhead']:.3f}"
    )
    for name, table in report["large_scale"]["models"].items():
        print(
            f"model: {name}: {table['pose_params'] / 1e6:.1f} M parameters, "
            f"{table['pose_gmacs']:.2f} GMACs, {table['per_gpu_images_s']:.0f} img/s per GPU, "
            f"batch {table['batch_per_gpu']}"
        )
        for row, real in zip(table["rows"], table["rows_with_overhead"], strict=True):
            print(
                f"model: {name}: {row['gpus']:4d} GPUs ({row['nodes']:3d} nodes), with the "
                f"fitted overhead: {real['images_s']:9.0f} img/s, efficiency "
                f"{real['efficiency']:.3f}, read {real['read_mb_s']:.0f} MB/s, COCO epoch "
                f"{real['coco_epoch_s']:.1f} s; without it: {row['images_s']:.0f} img/s, "
                f"efficiency {row['efficiency']:.3f} ({row['efficiency_no_overlap']:.3f} without "
                f"overlap); all-reduce {row['allreduce_ms']:.1f} ms ({row['allreduce_algorithm']}; "
                f"buckets {row['bucket_algorithm']}), exposed {row['exposed_ms']:.2f} ms"
            )
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
