"""Sharding throughput: instances/s with 1 and 2 workers on the same synthetic data, side by side,
and the size of the shards against the size of the source images.

    python benchmarks/shard_throughput.py [--images 1500] [--detail 384x288] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from data_prep.synthetic import generate
from pose.data.sharding import ShardRequest, shard_dataset
from pose.data.shards import read_manifest


def folder_bytes(folder: Path, pattern: str) -> int:
    return sum(p.stat().st_size for p in folder.glob(pattern))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=1500, help="synthetic train images")
    parser.add_argument("--detail", default="384x288")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--shard-size", type=int, default=200)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        generate(root / "data", seed=0, train_images=args.images, val_images=0, progress=False)
        ann = root / "data" / "annotations" / "person_keypoints_train.json"
        images = root / "data" / "images" / "train"
        source_bytes = folder_bytes(images, "*.jpg")
        rows = []
        for workers in args.workers:
            out = root / f"shards-{workers}"
            start = time.perf_counter()
            request = ShardRequest(
                annotations=ann,
                images=images,
                out=out,
                workers=workers,
                detail=tuple(int(v) for v in args.detail.split("x")),
                shard_size=args.shard_size,
                progress=False,
            )
            shard_dataset(request)
            seconds = time.perf_counter() - start
            manifest = read_manifest(out)
            rows.append(
                {
                    "workers": workers,
                    "instances": manifest.num_samples,
                    "seconds": round(seconds, 2),
                    "instances_per_s": round(manifest.num_samples / seconds, 1),
                    "shard_bytes": folder_bytes(out, "*.tar"),
                }
            )
    base = rows[0]["instances_per_s"]
    print(
        f"\nsource images: {args.images} synthetic, {source_bytes / 1e6:.1f} MB; crops at "
        f"{args.detail} detail"
    )
    print(
        f"{'workers':>8} {'instances':>10} {'seconds':>8} {'inst/s':>8} {'vs 1 worker':>12} "
        f"{'shards MB':>10} {'shards/src':>11}"
    )
    for row in rows:
        row["speedup_vs_first"] = round(row["instances_per_s"] / base, 2)
        row["shards_vs_source"] = round(row["shard_bytes"] / source_bytes, 3)
        print(
            f"{row['workers']:>8} {row['instances']:>10} {row['seconds']:>8} "
            f"{row['instances_per_s']:>8} {row['speedup_vs_first']:>11}x "
            f"{row['shard_bytes'] / 1e6:>10.1f} {row['shards_vs_source']:>11}"
        )
    if args.json:
        Path(args.json).write_text(
            json.dumps({"source_bytes": source_bytes, "rows": rows}, indent=1)
        )


if __name__ == "__main__":
    main()
