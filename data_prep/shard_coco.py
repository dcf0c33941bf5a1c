"""Shard COCO person instances into WebDataset tar files of person crops, with a manifest.

    python -m data_prep.shard_coco --ann ANN.json --images DIR --out OUT [--split train|val]
        [--dets DETS.json --det-thr 0.0] [--workers N] [--strict]

Each person is cropped once, with enough context around its padded box for scale and rotation
augmentation, at the detail the 384x288 recipe needs (never upsampled), so training streams
compact crops instead of re-decoding whole images. Crops are JPEGs with row-aligned restart
intervals, so that a sample can decode just the window it uses (pose/data/jpeg.py). Instances
are shuffled with a seed before they are cut into shards. Shards and the manifest are written
to temporary names and renamed when complete; re-running the same command resumes by skipping
finished shards.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import queue
import shutil
import sys
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from pose.config import atomic_write_text
from pose.data.coco import (
    CocoFormatError,
    PersonInstance,
    box_to_center_scale,
    detection_instances,
    load_coco,
    training_instances,
)
from pose.data.geometry import (
    affine_points,
    augmentation_context,
    crop_window,
    invert_affine,
    window_to_image_affine,
)
from pose.data.jpeg import RESTART_MCUS, encode_crop
from pose.data.shards import (
    COMPONENTS,
    FORMAT_VERSION,
    MANIFEST,
    META_FIELDS,
    Sample,
    build_shard,
    read_manifest,
    sha256_bytes,
    sha256_file,
    write_file_atomic,
)

PROGRESS = ".progress.json"  # the parameters of an unfinished run, for resuming
META_DIR = ".meta"  # one record per finished shard


class ShardingError(RuntimeError):
    """Bad input or a conflicting output folder: reported before (or instead of) work."""


@dataclass(frozen=True)
class ShardParams:
    split: str
    annotations: str
    annotations_sha256: str
    detections: str | None
    detections_sha256: str | None
    det_thr: float
    detail: tuple[int, int]  # (height, width) of the recipe whose detail the crops keep
    padding: float
    context_scale: float
    context_rotation: float
    jpeg_quality: int
    jpeg_restart_mcus: int  # restart interval cap (pose/data/jpeg.py); 0: crops decode whole
    shard_size: int
    seed: int
    version: int = FORMAT_VERSION

    @property
    def aspect_ratio(self) -> float:
        return self.detail[1] / self.detail[0]

    @property
    def context(self) -> tuple[float, float]:
        return augmentation_context(self.aspect_ratio, self.context_scale, self.context_rotation)

    def as_json(self) -> dict:
        return {**asdict(self), "detail": list(self.detail)}


# ------------------------------------------------------------------------------------------
# Cropping one image's people
# ------------------------------------------------------------------------------------------


def check_image_bytes(data: bytes) -> str | None:
    """A reason why encoded image bytes are unusable, or None. Decoders return a half-grey
    image for a truncated JPEG without an error, so the end marker is checked explicitly."""
    if data[:2] == b"\xff\xd8":  # JPEG: must end with the EOI marker (padding aside)
        if data.rstrip(b"\x00\r\n ")[-2:] != b"\xff\xd9":
            return "truncated_image"
    elif data[:8] == b"\x89PNG\r\n\x1a\n":
        if b"IEND" not in data[-12:]:
            return "truncated_image"
    elif not data:
        return "empty_image_file"
    return None


def read_image(path: Path, expected_size: tuple[int, int]) -> tuple[np.ndarray | None, str | None]:
    """(BGR image, None) or (None, reason)."""
    if not path.is_file():
        return None, "missing_image"
    data = path.read_bytes()
    reason = check_image_bytes(data)
    if reason:
        return None, reason
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        return None, "corrupt_image"
    if (image.shape[1], image.shape[0]) != tuple(expected_size):
        return None, "image_size_mismatch"
    return image, None


def crop_sample(image: np.ndarray, inst: PersonInstance, params: ShardParams) -> Sample:
    """The stored crop of one person and its keypoints, affine and record."""
    center, scale = box_to_center_scale(inst.bbox, params.aspect_ratio, params.padding)
    window, size = crop_window(center, scale, params.context, params.detail[0])
    x0, y0, x1, y1 = window
    region = np.zeros((y1 - y0, x1 - x0, 3), np.uint8)  # outside the image stays black
    height, width = image.shape[:2]
    sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
    if sx1 > sx0 and sy1 > sy0:
        region[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = image[sy0:sy1, sx0:sx1]
    if size != (x1 - x0, y1 - y0):
        region = cv2.resize(region, size, interpolation=cv2.INTER_AREA)
    jpg = encode_crop(region, params.jpeg_quality, params.jpeg_restart_mcus)
    if jpg is None:
        raise ShardingError(f"cv2 could not encode the crop of {inst.key}")
    to_image = window_to_image_affine(window, size)
    keypoints = inst.keypoints.astype(np.float64).copy()
    labelled = keypoints[:, 2] > 0
    keypoints[labelled, :2] = affine_points(invert_affine(to_image), keypoints[labelled, :2])
    keypoints[~labelled] = 0.0
    record = {
        "image_id": inst.image_id,
        "file_name": inst.file_name,
        "bbox": [round(float(v), 3) for v in inst.bbox],
        "center": [float(v) for v in center],
        "scale": [float(v) for v in scale],
        "image_size": list(inst.image_size),
        "area": float(inst.area),
        "score": float(inst.score),
        **({"ann_id": inst.ann_id} if inst.ann_id is not None else {"det_id": inst.det_id}),
    }
    box_center = affine_points(invert_affine(to_image), center[None])[0]
    meta = np.array(
        [
            inst.image_id,
            -1 if inst.ann_id is None else inst.ann_id,
            -1 if inst.det_id is None else inst.det_id,
            inst.score,
            inst.area,
            *box_center,
            scale[0] / to_image[0, 0],  # the padded box in crop pixels
            scale[1] / to_image[1, 1],
        ],
        dtype=np.float64,
    )
    return Sample(inst.key, jpg, keypoints.astype(np.float32), to_image, meta, record)


# ------------------------------------------------------------------------------------------
# One shard (runs in a worker process)
# ------------------------------------------------------------------------------------------

_progress_queue = None


def _init_worker(progress_queue) -> None:
    global _progress_queue
    _progress_queue = progress_queue


def write_shard(job: tuple) -> dict:
    """Crop the instances of one shard (each image decoded once), write the tar and its index
    atomically, then the shard's record. Returns the record."""
    index, instances, params, images_dir, out, strict = job
    name = f"{params.split}-{index:06d}"
    by_image: dict[str, list[PersonInstance]] = defaultdict(list)
    for inst in instances:
        by_image[inst.file_name].append(inst)
    samples: dict[str, Sample] = {}
    skipped: Counter = Counter()
    for file_name, people in by_image.items():
        image, reason = read_image(Path(images_dir) / file_name, people[0].image_size)
        if reason:
            if strict:
                ids = ", ".join(str(p.ann_id if p.ann_id is not None else p.det_id) for p in people)
                raise ShardingError(f"{reason}: image '{file_name}' (annotation ids {ids})")
            skipped[reason] += len(people)
        else:
            for inst in people:
                samples[inst.key] = crop_sample(image, inst, params)
        _report(len(people))
    ordered = [samples[inst.key] for inst in instances if inst.key in samples]
    record = {
        "name": f"{name}.tar",
        "index": f"{name}.idx",
        "num_samples": len(ordered),
        "skipped": dict(skipped),
    }
    if ordered:
        tar_bytes, index_text = build_shard(ordered)
        write_file_atomic(Path(out) / f"{name}.idx", index_text.encode())
        write_file_atomic(Path(out) / f"{name}.tar", tar_bytes)
        record.update(bytes=len(tar_bytes), sha256=sha256_bytes(tar_bytes))
    atomic_write_text(Path(out) / META_DIR / f"{name}.json", json.dumps(record))
    return record


def _report(count: int) -> None:
    if _progress_queue is not None:
        _progress_queue.put(count)


# ------------------------------------------------------------------------------------------
# The whole run
# ------------------------------------------------------------------------------------------


def select_instances(args, params: ShardParams) -> tuple[list[PersonInstance], Counter]:
    """Instances to crop (ground-truth boxes or detections), and skips by reason."""
    coco = load_coco(args.ann)

    def strict_skip(reason: str, what: str) -> None:
        raise ShardingError(f"{reason}: {what} in '{args.dets or args.ann}'")

    if args.dets:
        on_skip = strict_skip if args.strict else None
        instances, skipped = detection_instances(coco, args.dets, args.det_thr, on_skip=on_skip)
    else:
        instances, skipped = training_instances(coco, on_skip=strict_skip if args.strict else None)
    if not instances:
        raise ShardingError(
            f"no instances to shard from '{args.ann}' (skipped: {dict(skipped) or 'none'})"
        )
    order = np.random.default_rng(params.seed).permutation(len(instances))
    return [instances[i] for i in order], skipped


def prepare_output(out: Path, params: ShardParams, overwrite: bool) -> bool:
    """Make `out` ready: resume an unfinished run with the same parameters, refuse (or, with
    `overwrite`, clear) anything else. Returns True when it already holds the finished result."""
    now = params.as_json()
    recorded, finished = _recorded_params(out)
    if recorded == now:
        if finished:
            return True
    elif recorded is not None or (out.is_dir() and any(out.glob("*.tar"))):
        if not overwrite:
            what = "shards made" if finished else "an unfinished run"
            detail = (
                f"differences: {_diff(recorded, params)}"
                if recorded
                else "tar files of unknown origin"
            )
            raise ShardingError(
                f"'{out}' holds {what} with other parameters; use a new --out "
                f"folder or --overwrite ({detail})"
            )
        for path in [*out.glob("*.tar"), *out.glob("*.idx"), out / MANIFEST, out / PROGRESS]:
            path.unlink(missing_ok=True)
        shutil.rmtree(out / META_DIR, ignore_errors=True)
    (out / META_DIR).mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / PROGRESS, json.dumps(now))
    return False


def _recorded_params(out: Path) -> tuple[dict | None, bool]:
    """The parameters an earlier run recorded in `out`, and whether that run finished."""
    for name, finished in ((MANIFEST, True), (PROGRESS, False)):
        path = out / name
        if path.is_file():
            try:
                data = json.loads(path.read_text())
            except json.JSONDecodeError:
                return {"unreadable": name}, finished
            return (data.get("params") if finished else data), finished
    return None, False


def _diff(previous: dict, params: ShardParams) -> str:
    now = params.as_json()
    keys = sorted(k for k in set(previous) | set(now) if previous.get(k) != now.get(k))
    return ", ".join(f"{k}: {previous.get(k)!r} -> {now.get(k)!r}" for k in keys)


def finished_shards(out: Path) -> dict[int, dict]:
    """Records of shards completed by an earlier run whose files are intact."""
    done = {}
    for meta in (out / META_DIR).glob("*.json"):
        record = json.loads(meta.read_text())
        index = int(meta.stem.rsplit("-", 1)[1])
        tar = out / record["name"]
        if record["num_samples"] == 0 or (tar.is_file() and tar.stat().st_size == record["bytes"]):
            done[index] = record
    return done


def run(args) -> dict:
    """Shard as `args` say; returns the manifest."""
    out = Path(args.out)
    params = make_params(args)
    images_dir = Path(args.images)
    if not images_dir.is_dir():
        raise ShardingError(f"image folder '{images_dir}' does not exist")
    instances, skipped = select_instances(args, params)
    if args.shard_mb:
        params = replace(
            params, shard_size=estimate_shard_size(instances, params, images_dir, args.shard_mb)
        )
    if prepare_output(out, params, args.overwrite):
        print(f"shard_coco: '{out}' already holds this result; nothing to do")
        return read_manifest(out)
    chunks = [
        instances[i : i + params.shard_size] for i in range(0, len(instances), params.shard_size)
    ]
    done = finished_shards(out)
    jobs = [
        (i, chunk, params, str(images_dir), str(out), args.strict)
        for i, chunk in enumerate(chunks)
        if i not in done
    ]
    if done:
        print(f"shard_coco: resuming, {len(done)} of {len(chunks)} shards already written")
    start = time.perf_counter()
    todo = sum(len(job[1]) for job in jobs)
    records = dict(done)
    with tqdm(total=todo, desc=f"shard {params.split}", unit="inst") as bar:
        for index, record in _run_jobs(jobs, args.workers, bar):
            records[index] = record
    seconds = time.perf_counter() - start
    manifest = write_manifest(out, params, [records[i] for i in range(len(chunks))], skipped)
    rate = todo / max(seconds, 1e-9)
    print(
        f"shard_coco: {manifest['num_samples']} samples in {len(manifest['shards'])} shards "
        f"({todo} instances cropped in {seconds:.1f} s, {rate:.0f} inst/s) -> {out}"
    )
    if manifest["skipped"]:
        print(
            "shard_coco: skipped " + ", ".join(f"{k}: {v}" for k, v in manifest["skipped"].items())
        )
    return manifest


def estimate_shard_size(
    instances: list[PersonInstance], params: ShardParams, images_dir: Path, megabytes: float
) -> int:
    """Samples per shard for shards of about `megabytes`, from the mean size of the first
    (shuffled) instances' samples. An estimate: shards come out near, not at, that size."""
    sizes = []
    for inst in instances[:32]:
        image, _ = read_image(images_dir / inst.file_name, inst.image_size)
        if image is not None:
            sizes.append(sum(len(d) + 1024 for _, d in crop_sample(image, inst, params).members()))
    if not sizes:
        raise ShardingError("--shard-mb: none of the first instances could be read to estimate")
    return max(1, int(megabytes * 1e6 / float(np.mean(sizes))))


def _run_jobs(jobs: list[tuple], workers: int, bar: tqdm):
    """Yield (shard index, record) as shards finish, updating the bar per image."""
    if workers <= 1:
        global _progress_queue
        _progress_queue = _BarQueue(bar)
        try:
            for job in jobs:
                yield job[0], write_shard(job)
        finally:
            _progress_queue = None
        return
    context = mp.get_context("spawn")
    progress = context.Queue()
    with context.Pool(workers, initializer=_init_worker, initargs=(progress,)) as pool:
        pending = {job[0]: pool.apply_async(write_shard, (job,)) for job in jobs}
        while pending:
            _drain(progress, bar)
            for index in [i for i, r in pending.items() if r.ready()]:
                yield index, pending.pop(index).get()  # re-raises a worker's error here
        _drain(progress, bar)


class _BarQueue:
    def __init__(self, bar: tqdm):
        self.bar = bar

    def put(self, count: int) -> None:
        self.bar.update(count)


def _drain(progress, bar: tqdm) -> None:
    try:
        bar.update(progress.get(timeout=0.05))
        while True:
            bar.update(progress.get_nowait())
    except queue.Empty:
        pass


def write_manifest(out: Path, params: ShardParams, records: list[dict], skipped: Counter) -> dict:
    total_skipped = Counter(skipped)
    for record in records:
        total_skipped.update(record["skipped"])
    shards = [
        {k: r[k] for k in ("name", "index", "num_samples", "bytes", "sha256")}
        for r in records
        if r["num_samples"]
    ]
    if not shards:
        raise ShardingError(f"every instance was skipped ({dict(total_skipped)}); nothing written")
    manifest = {
        "num_samples": sum(s["num_samples"] for s in shards),
        "shards": shards,
        "skipped": dict(sorted(total_skipped.items())),
        "params": params.as_json(),
        "components": list(COMPONENTS),
        "meta_fields": list(META_FIELDS),
    }
    atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=1))
    (out / PROGRESS).unlink(missing_ok=True)
    return manifest


def make_params(args) -> ShardParams:
    ann = Path(args.ann)
    if not ann.is_file():
        raise ShardingError(f"annotation file '{ann}' does not exist")
    if args.dets and args.split == "train":
        raise ShardingError("--dets is for evaluation splits; training uses ground-truth boxes")
    if args.dets and not Path(args.dets).is_file():
        raise ShardingError(f"detections file '{args.dets}' does not exist")
    return ShardParams(
        split=args.split,
        annotations=str(ann.resolve()),
        annotations_sha256=sha256_file(ann),
        detections=str(Path(args.dets).resolve()) if args.dets else None,
        detections_sha256=sha256_file(Path(args.dets)) if args.dets else None,
        det_thr=args.det_thr,
        detail=args.detail,
        padding=1.25,
        context_scale=args.context_scale,
        context_rotation=args.context_rotation,
        jpeg_quality=args.quality,
        jpeg_restart_mcus=args.restart_mcus,
        shard_size=args.shard_size,
        seed=args.seed,
    )


def _size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
        assert h > 0 and w > 0
    except (ValueError, AssertionError):
        raise argparse.ArgumentTypeError(f"'{text}' is not HEIGHTxWIDTH, e.g. 384x288") from None
    return h, w


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ann", required=True, help="COCO person-keypoints annotation file")
    p.add_argument("--images", required=True, help="folder holding the annotation's images")
    p.add_argument("--out", required=True, help="output folder for shards and manifest")
    p.add_argument("--split", default="train", choices=["train", "val"])
    p.add_argument("--dets", help="person detections (COCO results format) instead of GT boxes")
    p.add_argument("--det-thr", type=float, default=0.0, help="detection score threshold")
    p.add_argument("--workers", type=int, default=1, help="worker processes")
    p.add_argument("--strict", action="store_true", help="any bad instance is an error")
    p.add_argument("--shard-size", type=int, default=1000, help="samples per shard")
    p.add_argument(
        "--shard-mb",
        type=float,
        default=0.0,
        help="about this many MB per shard (estimated from a sample)",
    )
    p.add_argument(
        "--detail",
        type=_size,
        default=(384, 288),
        help="HxW of the recipe whose detail crops keep (default 384x288)",
    )
    p.add_argument(
        "--context-scale",
        type=float,
        default=1.35,
        help="largest augmentation scale the stored context covers",
    )
    p.add_argument(
        "--context-rotation",
        type=float,
        default=45.0,
        help="largest rotation (degrees) the stored context covers",
    )
    p.add_argument("--quality", type=int, default=95, help="JPEG quality of the crops")
    p.add_argument(
        "--restart-mcus",
        type=int,
        default=RESTART_MCUS,
        help="restart marker every (up to) this many MCUs, so that a sample decodes "
        "only the window its warp reads; 0: none, crops decode whole",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the shuffle across shards")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace what --out holds if made with other parameters",
    )
    args = p.parse_args(argv)
    if args.shard_size <= 0 or args.workers <= 0 or not 1 <= args.quality <= 100:
        p.error("--shard-size and --workers must be positive, --quality in 1..100")
    if not 0 <= args.restart_mcus <= 65535:
        p.error("--restart-mcus must be in 0..65535")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        run(args)
    except (ShardingError, CocoFormatError) as e:
        print(f"shard_coco: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
