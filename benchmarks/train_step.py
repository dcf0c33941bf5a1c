"""Training throughput, side by side in one run, same model, batch and precision:

- torch:   a plain PyTorch loop (forward, JointsMSELoss, backward, the config's optimizer) on
           a fixed batch
- engine:  the DeepSpeed engine's step (pose.engine.trainer.train_step) on the same fixed batch
- loop:    the engine's step fed by the real input pipeline (shards -> loader -> targets)

engine / torch is the engine's overhead; 1 - loop / engine is the share of time spent waiting
for data. On a GPU it also prints absolute images/s per GPU. `--also-batch B` adds the loop at
batch B (its own model, engine and loader), in the same turns, and prints its images/s against
the loop's: what a wall-clock budget trains at the other batch size. `--vs "KEY=VALUE ..."` adds
the loop of a second config (the first with those overrides: its own model, engine and loader),
in the same turns, and prints its images/s against the loop's (e.g. `--vs
"engine.memory_format=channels_last"` or `--vs "engine.compile=true"` on the CPU).

    python benchmarks/train_step.py [--config configs/demo.yaml] [--steps 5] [--rounds 5]
        [--json OUT] [--also-batch B] [--vs "KEY=VALUE ..."]
        [overrides, e.g. model.backbone=resnet50 data.image_size=[256,192]]
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import torch

from pose.caches import use_cache_folders
from pose.config import Config, layer_overrides, load_config
from pose.data.backends import build_loader
from pose.data.codec import HeatmapCodec, heatmap_size
from pose.data.loader import LoaderSpec
from pose.distributed import init_distributed
from pose.engine.build import build_training
from pose.engine.deepspeed_adapter import resolve_precision
from pose.engine.loss import joints_mse_loss
from pose.engine.optimizer import build_optimizer
from pose.engine.trainer import train_step
from pose.models import build_model
from pose.timing import interleaved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--steps", type=int, default=5, help="steps per variant per round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of the variants in turn")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--also-batch", type=int, help="also time the loop at this batch size")
    parser.add_argument("--vs", help="also time the loop of the config with these overrides")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    use_cache_folders()
    base = ["log.wandb=off"]
    cfg = load_config(args.config, layer_overrides(base, args.overrides))
    env = init_distributed(cfg.launch)
    precision = resolve_precision(cfg.engine.precision, env.device)
    loader = build_loader(LoaderSpec(cfg.data, "train", cfg.train.batch_size, device=env.device))
    batch = next(iter(loader.epoch(0)))
    data, train = cfg.data, cfg.train
    codec = HeatmapCodec.of(data, heatmap_size(data.image_size, cfg.model.output_stride))
    autocast = torch.autocast(env.device.type, dtype=torch.bfloat16, enabled=precision == "bf16")

    torch.manual_seed(0)
    plain = build_model(cfg.model, loader.layout.num_joints).to(env.device).train()
    optimizer = build_optimizer(plain, cfg.optimizer, cfg.optimizer.lr)  # the engine's too

    def torch_step():
        targets, weights = codec.encode(batch["keypoints"])
        with autocast:
            heatmaps = plain(batch["image"])
        loss = joints_mse_loss(heatmaps, targets, weights)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def real_loop(variant: Config, source):
        """The engine's step fed by the real input pipeline `source` (at the variant's batch),
        everything built as the trainer builds it (compiled, channels_last as it says)."""
        torch.manual_seed(0)
        engine = build_training(variant, loader.layout.num_joints, env).engine
        batches = iter(())

        def step():
            nonlocal batches
            try:
                real = next(batches)
            except StopIteration:
                batches = iter(source.epoch(1))
                real = next(batches)
            train_step(engine, real, data, variant.loss)

        return engine, step

    engine, loop_step = real_loop(cfg, loader)
    variants = {
        "torch": torch_step,
        "engine": lambda: train_step(engine, batch, data, cfg.loss),
        "loop": loop_step,
    }
    images = {name: train.batch_size for name in variants}
    if args.also_batch:
        other = f"loop_b{args.also_batch}"
        other_cfg = replace(cfg, train=replace(train, batch_size=args.also_batch))
        spec = LoaderSpec(data, "train", args.also_batch, device=env.device)
        variants[other] = real_loop(other_cfg, build_loader(spec))[1]
        images[other] = args.also_batch
    if args.vs:
        vs_cfg = load_config(args.config, layer_overrides(base, args.overrides, args.vs.split()))
        spec = LoaderSpec(vs_cfg.data, "train", vs_cfg.train.batch_size, device=env.device)
        variants["loop_vs"] = real_loop(vs_cfg, build_loader(spec))[1]
        images["loop_vs"] = vs_cfg.train.batch_size
    n = batch["image"].shape[0]
    seconds = interleaved(variants, args.steps, args.rounds)
    rows = {
        k: {"seconds_per_step": round(v, 4), "images_per_s": round(images[k] / v, 1)}
        for k, v in seconds.items()
    }
    overhead = seconds["engine"] / seconds["torch"] - 1
    data_wait = 1 - seconds["engine"] / seconds["loop"]
    input_size = "x".join(map(str, data.image_size))
    name = f"{cfg.model.backbone} attention={cfg.model.attention} {input_size}"
    print(f"{name}, batch {n}, {precision}, {env.device}")
    for key, row in rows.items():
        print(f"{key:>8}: {row['images_per_s']:>8} images/s ({row['seconds_per_step']} s/step)")
    print(
        f"engine overhead vs plain torch: {overhead:+.1%}; data-wait fraction of the loop: "
        f"{data_wait:.1%}"
    )
    if args.also_batch:
        ratio = (args.also_batch / seconds[other]) / (n / seconds["loop"])
        print(f"loop at batch {args.also_batch} / at batch {n}: {ratio:.3f} of the images/s")
    if args.vs:
        ratio = rows["loop_vs"]["images_per_s"] / rows["loop"]["images_per_s"]
        print(f"loop with {args.vs} / without: {ratio:.3f} of the images/s")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "setup": name,
                    "precision": precision,
                    **rows,
                    "engine_overhead": overhead,
                    "data_wait": data_wait,
                },
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
