"""Cost as the data grows: for COCO-format annotation sets of N instances (synthetic: random
people in boxes on a small pool of real JPEGs, linked under many names, so no new images are
needed), per stage, at each N:

- sharding (`data_prep.shard_coco` in its own process): instances/s and the peak memory of the
  whole process tree (workers included), sampled every 0.1 s;
- loader start-up (its own process): seconds from nothing to the first batch, and peak memory;
- evaluation post-processing of P predictions (about 20 a image, as person detections give):
  rescoring with OKS NMS and the COCO results, writing them as JSON, and scoring (pycocotools
  COCOeval), in seconds per 10k predictions;

and the growth exponent of each (the slope of log cost against log N, least squares: 1.0 is
linear). Results as JSON and a table.

    python benchmarks/scale.py [--sizes 4000 40000 400000] [--predictions 10000 100000]
        [--workers 2] [--stages shard,loader,eval] [--quick] [--json OUT]
    python benchmarks/scale.py --quick      # small sizes: what CI runs
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import psutil

POOL_IMAGES = 16  # distinct JPEGs, linked under every image name
IMAGE_WH = (640, 480)
PEOPLE_PER_IMAGE = 3
ROOT = Path(__file__).resolve().parents[1]


def make_annotations(folder: Path, instances: int, seed: int = 0) -> tuple[Path, Path]:
    """A COCO keypoints file of `instances` people (17 joints) on ceil(instances / 3) images,
    each image a link to one of a pool of JPEGs; returns (annotation file, image folder)."""
    rng = np.random.default_rng(seed)
    images_dir = folder / "images"
    pool = folder / "pool"
    images_dir.mkdir(parents=True, exist_ok=True)
    pool.mkdir(exist_ok=True)
    width, height = IMAGE_WH
    for i in range(POOL_IMAGES):
        picture = rng.integers(0, 256, (height // 8, width // 8, 3), dtype=np.uint8)
        picture = cv2.resize(picture, (width, height), interpolation=cv2.INTER_LINEAR)
        cv2.imwrite(str(pool / f"{i}.jpg"), picture, [cv2.IMWRITE_JPEG_QUALITY, 90])
    count = math.ceil(instances / PEOPLE_PER_IMAGE)
    images, annotations = [], []
    for image_id in range(1, count + 1):
        name = f"{image_id:012d}.jpg"
        os.symlink(pool / f"{image_id % POOL_IMAGES}.jpg", images_dir / name)
        images.append({"id": image_id, "file_name": name, "width": width, "height": height})
    people = rng.random((instances, 4))
    joints = rng.random((instances, 17, 2))
    for n in range(instances):
        w, h = 40 + people[n, 0] * 200, 80 + people[n, 1] * 300
        x, y = people[n, 2] * (width - w), people[n, 3] * (height - h)
        xy = joints[n] * [w, h] + [x, y]
        keypoints = np.concatenate([xy.round(1), np.full((17, 1), 2)], axis=1)
        angles = np.linspace(0, 2 * np.pi, 24, endpoint=False)  # a COCO-like outline
        outline = np.stack([x + w / 2 * (1 + np.cos(angles)), y + h / 2 * (1 + np.sin(angles))], 1)
        annotations.append(
            {
                "id": n + 1,
                "image_id": n // PEOPLE_PER_IMAGE + 1,
                "category_id": 1,
                "bbox": [round(x, 1), round(y, 1), round(w, 1), round(h, 1)],
                "area": round(w * h, 1),
                "iscrowd": 0,
                "num_keypoints": 17,
                "keypoints": [
                    float(v) if i % 3 < 2 else 2 for i, v in enumerate(keypoints.ravel())
                ],
                "segmentation": [outline.round(1).ravel().tolist()],
            }
        )
    categories = [{"id": 1, "name": "person", "keypoints": COCO_JOINTS, "skeleton": []}]
    ann = folder / "annotations.json"
    with open(ann, "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, f)
    return ann, images_dir


COCO_JOINTS = [
    "nose",
    "left_eye",
    "right_eye",
    "left_ear",
    "right_ear",
    "left_shoulder",
    "right_shoulder",
    "left_elbow",
    "right_elbow",
    "left_wrist",
    "right_wrist",
    "left_hip",
    "right_hip",
    "left_knee",
    "right_knee",
    "left_ankle",
    "right_ankle",
]


def peak_of(command: list[str], env: dict | None = None) -> tuple[float, float, str]:
    """Run `command`; its seconds, the peak resident memory of its process tree (MB), output."""
    proc = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    peak, done = [0.0], threading.Event()

    def sample() -> None:
        root = psutil.Process(proc.pid)
        while not done.is_set():
            try:
                tree = [root, *root.children(recursive=True)]
                rss = sum(p.memory_info().rss for p in tree if p.is_running())
                peak[0] = max(peak[0], rss / 2**20)
            except psutil.Error:
                pass
            done.wait(0.1)

    start = time.perf_counter()
    watcher = threading.Thread(target=sample, daemon=True)
    watcher.start()
    output, _ = proc.communicate()
    seconds = time.perf_counter() - start
    done.set()
    watcher.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:4])} failed:\n{output[-3000:]}")
    return seconds, peak[0], output


def shard_stage(ann: Path, images: Path, out: Path, workers: int) -> dict:
    command = [sys.executable, "-m", "data_prep.shard_coco", "--ann", str(ann), "--images"]
    command += [str(images), "--out", str(out), "--detail", "128x96", "--workers", str(workers)]
    command += ["--shard-size", "1000"]
    seconds, peak, _ = peak_of(command)
    count = json.loads((out / "manifest.json").read_text())["num_samples"]
    return {
        "samples": count,
        "seconds": round(seconds, 2),
        "instances_per_s": round(count / seconds, 1),
        "us_per_instance": round(1e6 * seconds / count, 1),
        "peak_mb": round(peak),
    }


LOADER = """
import sys, time
from pose.config import load_config
from pose.data.backends import build_loader
from pose.data.loader import LoaderSpec
start = time.perf_counter()
cfg = load_config("configs/demo.yaml", [f"data.train_shards={sys.argv[1]}", "data.backend=torch",
                  "data.num_workers=0", "data.image_size=[128,96]"])
loader = build_loader(LoaderSpec(cfg.data, "train", 32))
batches = loader.epoch(0)
next(batches)
print("first batch", time.perf_counter() - start)
batches.close()
"""


def loader_stage(shards: Path) -> dict:
    _seconds, peak, output = peak_of([sys.executable, "-c", LOADER, str(shards)])
    first = float(output.strip().splitlines()[-1].split()[-1])
    return {"seconds_to_first_batch": round(first, 2), "peak_mb": round(peak)}


def eval_stage(folder: Path, predictions: int, seed: int = 0) -> dict:
    """Post-processing of `predictions` person predictions, about 20 an image, around one or
    two annotated people an image, timed stage by stage."""
    from pose.data.layout import COCO_17
    from pose.eval.coco_eval import Prediction, coco_results, score_results, write_json

    rng = np.random.default_rng(seed)
    images = max(1, predictions // 20)
    width, height = IMAGE_WH
    truth, anns, preds = [], [], []
    for image_id in range(1, images + 1):
        truth.append(
            {"id": image_id, "file_name": f"{image_id}.jpg", "width": width, "height": height}
        )
        people = []
        for _ in range(1 + (image_id % 2)):
            w, h = rng.uniform(60, 200), rng.uniform(120, 380)
            x, y = rng.uniform(0, width - w), rng.uniform(0, height - h)
            xy = rng.random((17, 2)) * [w, h] + [x, y]
            people.append((xy, w * h))
            kpts = np.concatenate([xy, np.full((17, 1), 2.0)], 1).ravel().round(1).tolist()
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": image_id,
                    "category_id": 1,
                    "bbox": [x, y, w, h],
                    "area": w * h,
                    "iscrowd": 0,
                    "num_keypoints": 17,
                    "keypoints": kpts,
                }
            )
        for n in range(20):
            xy, area = people[n % len(people)]
            noisy = xy + rng.normal(0, 2 + n, xy.shape)
            scores = rng.uniform(0.1, 1.0, (17, 1))
            preds.append(
                Prediction(
                    image_id,
                    np.concatenate([noisy, scores], 1),
                    float(rng.uniform()),
                    area * 1.25**2,
                    f"d{len(preds)}",
                )
            )
            if len(preds) == predictions:
                break
    ann = folder / f"truth-{predictions}.json"
    categories = [{"id": 1, "name": "person", "keypoints": COCO_JOINTS, "skeleton": []}]
    ann.write_text(json.dumps({"images": truth, "annotations": anns, "categories": categories}))
    sigmas = np.asarray(COCO_17.sigmas)
    times = {}
    start = time.perf_counter()
    results = coco_results(preds, 0.2, 0.9, sigmas=sigmas)
    times["rescore_nms_results"] = time.perf_counter() - start
    start = time.perf_counter()
    write_json(folder / "results.json", results, compact=True)  # as evaluation writes it
    times["write_json"] = time.perf_counter() - start
    start = time.perf_counter()
    metrics = score_results(ann, results, sigmas)
    times["scoring"] = time.perf_counter() - start
    row = {"predictions": predictions, "images": images, "kept": len(results)}
    row["AP"] = round(metrics["AP"], 6)
    row["seconds"] = round(sum(times.values()), 2)  # with the reference scorer, pycocotools
    try:  # the optional scorer, side by side
        start = time.perf_counter()
        faster = score_results(ann, results, sigmas, "faster_coco_eval")
        row["scoring_faster_coco_eval_s"] = round(time.perf_counter() - start, 2)
        row["AP_faster_coco_eval"] = round(faster["AP"], 6)
    except ValueError:  # not installed (a ConfigError says so)
        pass
    row["seconds_per_10k"] = {k: round(v * 10_000 / predictions, 3) for k, v in times.items()}
    return row


def exponent(sizes: list[int], costs: list[float]) -> float | None:
    """The slope of log cost against log size (1: linear)."""
    if len(sizes) < 2 or len(costs) < 2 or min(costs) <= 0:
        return None
    slope, _ = np.polyfit(np.log(sizes), np.log(costs), 1)
    return round(float(slope), 3)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[4000, 40000, 400000])
    parser.add_argument("--predictions", type=int, nargs="+", default=[10000, 100000])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--stages", default="shard,loader,eval")
    parser.add_argument("--quick", action="store_true", help="1,000 and 4,000; 2,000 and 8,000")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.predictions = [1000, 4000], [2000, 8000]
    stages = set(args.stages.split(","))
    result = {
        "machine": {"cpus": os.cpu_count(), "load": os.getloadavg()},
        "shard": [],
        "loader": [],
        "eval": [],
    }
    with tempfile.TemporaryDirectory(prefix="posescale-scale-") as tmp:
        for size in args.sizes:
            folder = Path(tmp) / str(size)
            ann, images = make_annotations(folder, size)
            if stages & {"shard", "loader"}:
                row = {
                    "instances": size,
                    **shard_stage(ann, images, folder / "shards", args.workers),
                }
                result["shard"].append(row)
                print(f"scale: shard {size}: {row}", flush=True)
            if "loader" in stages:
                row = {"instances": size, **loader_stage(folder / "shards")}
                result["loader"].append(row)
                print(f"scale: loader {size}: {row}", flush=True)
            shutil.rmtree(folder)
        if "eval" in stages:
            for count in args.predictions:
                row = eval_stage(Path(tmp), count)
                result["eval"].append(row)
                print(f"scale: eval {count}: {row}", flush=True)
    result["exponents"] = {
        "shard_seconds": exponent(args.sizes, [r["seconds"] for r in result["shard"]]),
        "shard_peak_mb": exponent(args.sizes, [r["peak_mb"] for r in result["shard"]]),
        "loader_seconds": exponent(
            args.sizes, [r["seconds_to_first_batch"] for r in result["loader"]]
        ),
        "loader_peak_mb": exponent(args.sizes, [r["peak_mb"] for r in result["loader"]]),
        "eval_seconds": exponent(args.predictions, [r["seconds"] for r in result["eval"]]),
    }
    result["machine"]["load_after"] = os.getloadavg()
    print(json.dumps(result["exponents"]))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
