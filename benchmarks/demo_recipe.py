"""What the demo recipe reaches: the demo config trained from scratch for each seed and each
image budget (each its own run, the schedule laid over its budget), evaluated once at its last
step with flip test and DARK, as `make demo` does. docs/demo.md's seed table and AP-against-images
curve come from it:

    python benchmarks/demo_recipe.py --seeds 0 1 2 --images 17984 --min-ap 0.5
    python benchmarks/demo_recipe.py --seeds 0 --images 5984 12000 17984 35968

Runs go to `--out` (runs/demo-recipe/seed{S}-{N}img); a finished run is read, not trained
again. Prints one line per run and a table, writes `--json`, plots AP against images per seed
to `--plot` (with `--reference "LABEL=IMAGES:AP,IMAGES:AP..."`, a measured curve beside it);
with `--min-ap`, exits 1 when a run ends below it. Extra arguments are config overrides for
every run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from pose.files import atomic_write
from pose.folders import RunFolder
from pose.tracking import read_run_metrics
from pose.viz.curves import spread_plot

ROOT = Path(__file__).resolve().parents[1]


def final_metrics(run: Path) -> dict | None:
    """The last val record (step and metrics) of a finished run, else None."""
    if not RunFolder(run).has_started():
        return None
    metrics = read_run_metrics(run)
    train, val = metrics.train, metrics.val
    if not train or not val or val[-1].step != train[-1].step:
        return None
    return {"step": val[-1].step, **val[-1].metrics}


def train(run: Path, seed: int, images: int, config: str, overrides: list[str]) -> float:
    """Train one run to its image budget; the seconds it took."""
    command = [sys.executable, str(ROOT / "launch" / "train.py"), "--config", config]
    command += [f"seed={seed}", f"train.budget_images={images}", "eval.every_epochs=1000"]
    command += [f"run.dir={run}", "log.wandb=off", *overrides]
    start = time.perf_counter()
    subprocess.run(command, check=True, cwd=ROOT)
    return time.perf_counter() - start


def parse_reference(text: str) -> tuple[str, list[tuple[int, float]]]:
    """ "LABEL=IMAGES:AP,IMAGES:AP" -> (label, points)."""
    label, _, points = text.partition("=")
    try:
        pairs = [p.split(":") for p in points.split(",")]
        return label, sorted((int(n), float(ap)) for n, ap in pairs)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--reference '{text}': LABEL=IMAGES:AP,...") from None


def plot(rows: list[dict], references: list, path: Path) -> Path:
    curves = {}
    for seed in sorted({r["seed"] for r in rows}):
        points = sorted((r["images"], r["AP"]) for r in rows if r["seed"] == seed)
        curves[f"seed {seed}"] = [tuple(map(list, zip(*points)))]
    for label, points in references:
        curves[label] = [tuple(map(list, zip(*points)))]
    return spread_plot(curves, path, "AP against training images", "images", "AP (flip, DARK)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="demo", help="config file or shipped name")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--images", type=int, nargs="+", default=[17984], help="image budgets")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "demo-recipe")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--min-ap", type=float, help="exit 1 when a run ends below this AP")
    parser.add_argument("--plot", type=Path, help="write a PNG of AP against images here")
    parser.add_argument("--reference", type=parse_reference, action="append", default=[])
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    rows = []
    for images in args.images:
        for seed in args.seeds:
            run = args.out / f"seed{seed}-{images}img"
            seconds = None
            if final_metrics(run) is None:
                try:
                    seconds = train(run, seed, images, args.config, args.overrides)
                except subprocess.CalledProcessError as e:
                    print(f"demo_recipe: error: {run}: training exited {e.returncode}")
                    return 2
            val = final_metrics(run)
            if val is None:
                print(f"demo_recipe: error: {run}: finished without a final evaluation")
                return 2
            row = {"seed": seed, "images": images, "run": str(run), "train_seconds": seconds}
            row |= {k: val[k] for k in ("step", "AP", "AP50", "AP75")}
            rows.append(row)
            print(f"demo_recipe: seed {seed}, {images} images: AP {val['AP']:.3f}", flush=True)
    print("| images | seed | steps | AP | AP50 | AP75 |\n|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['images']:,} | {r['seed']} | {r['step']} | {r['AP']:.3f} | {r['AP50']:.3f} "
            f"| {r['AP75']:.3f} |"
        )
    if args.json:
        atomic_write(args.json, json.dumps({"config": args.config, "runs": rows}, indent=1))
    if args.plot:
        print(f"demo_recipe: wrote {plot(rows, args.reference, args.plot)}")
    below = [r for r in rows if args.min_ap is not None and r["AP"] < args.min_ap]
    for r in below:
        where = f"seed {r['seed']}, {r['images']} images"
        print(f"demo_recipe: {where}: AP {r['AP']:.3f} is below {args.min_ap}")
    return 1 if below else 0


if __name__ == "__main__":
    sys.exit(main())
