"""Check a shard folder against its manifest: every shard present with the right size, hash and
sample count, every sample complete, every image decodable, every index file consistent.

    python -m data_prep.verify OUT

Prints each problem with its shard (and key) and exits 1 if there is any."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from pose.data.shards import (
    COMPONENTS,
    INDEX_VERSION,
    META_FIELDS,
    ShardError,
    decode_npy,
    iter_samples,
    read_manifest,
    sha256_file,
)


def verify(folder: str | Path, decode_images: bool = True) -> list[str]:
    """Problems found in a shard folder, as readable lines (empty when all is well)."""
    folder = Path(folder)
    try:
        manifest = read_manifest(folder)
    except ShardError as e:
        return [str(e)]
    problems = []
    total = 0
    for shard in tqdm(manifest["shards"], desc="verify", unit="shard"):
        path = folder / shard["name"]
        if not path.is_file():
            problems.append(f"{shard['name']}: missing")
            continue
        if path.stat().st_size != shard["bytes"] or sha256_file(path) != shard["sha256"]:
            problems.append(f"{shard['name']}: size or sha256 differs from the manifest")
        count = 0
        try:
            for key, parts in iter_samples(path):
                count += 1
                problems += [
                    f"{shard['name']} {key}: {p}" for p in _check_sample(parts, decode_images)
                ]
        except ShardError as e:
            problems.append(str(e))
        total += count
        if count != shard["num_samples"]:
            problems.append(
                f"{shard['name']}: {count} samples, manifest says {shard['num_samples']}"
            )
        problems += _check_index(folder / shard["index"], count, shard["name"])
    if total != manifest["num_samples"]:
        problems.append(f"{total} samples in all, manifest says {manifest['num_samples']}")
    return problems


def _check_sample(parts: dict[str, bytes], decode_images: bool) -> list[str]:
    missing = [c for c in COMPONENTS if c not in parts]
    if missing:
        return [f"missing components {missing}"]
    problems = []
    if decode_images:
        image = cv2.imdecode(np.frombuffer(parts["jpg"], np.uint8), cv2.IMREAD_COLOR)
        if image is None:
            problems.append("jpg does not decode")
    try:
        kpts, affine = decode_npy(parts["kpts.npy"]), decode_npy(parts["affine.npy"])
        meta = decode_npy(parts["meta.npy"])
        if kpts.ndim != 2 or kpts.shape[1] != 3 or affine.shape != (2, 3):
            problems.append(f"keypoints {kpts.shape} / affine {affine.shape} have wrong shapes")
        elif meta.shape != (len(META_FIELDS),):
            problems.append(f"meta has shape {meta.shape}, expected ({len(META_FIELDS)},)")
        elif not all(np.isfinite(a).all() for a in (kpts, affine, meta)):
            problems.append("keypoints, affine or meta are not finite")
        record = json.loads(parts["json"])
        if "image_id" not in record or not ({"ann_id", "det_id"} & set(record)):
            problems.append("json record lacks image_id or ann_id/det_id")
    except (ValueError, json.JSONDecodeError) as e:
        problems.append(f"unreadable component: {e}")
    return problems


def _check_index(path: Path, count: int, shard: str) -> list[str]:
    if not path.is_file():
        return [f"{shard}: index file {path.name} missing"]
    lines = path.read_text().splitlines()
    header = lines[0].split() if lines else []
    if header != [INDEX_VERSION, str(count)] or len(lines) != count + 1:
        return [f"{shard}: index {path.name} does not list its {count} samples"]
    return []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", help="shard folder (with manifest.json)")
    parser.add_argument("--no-decode", action="store_true", help="skip decoding the images")
    args = parser.parse_args(argv)
    problems = verify(args.folder, decode_images=not args.no_decode)
    for line in problems:
        print(f"verify: {line}")
    manifest_ok = not problems
    print(f"verify: {args.folder}: " + ("OK" if manifest_ok else f"{len(problems)} problem(s)"))
    return 0 if manifest_ok else 1


if __name__ == "__main__":
    sys.exit(main())
