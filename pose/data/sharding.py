"""Sharding a COCO-format keypoint dataset into person-crop shards: a library call with a typed
request and result (`data_prep.shard_coco` is the command line around it).

Each person is cropped once, with enough context around its padded box for scale and rotation
augmentation, at the detail the 384x288 recipe needs (never upsampled), so training streams
compact crops instead of re-decoding whole images. Crops are JPEGs with row-aligned restart
intervals, so that a sample can decode just the window it uses (pose/data/jpeg.py). Instances
are shuffled with a seed before they are cut into shards. Shards and the manifest are written
to temporary names and renamed when complete; running the same request again resumes by
skipping finished shards.
"""

from __future__ import annotations

import multiprocessing as mp
import queue
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from pose.data.coco import (
    PersonInstance,
    box_to_center_scale,
    detection_instances,
    index_coco,
    person_category,
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
from pose.data.layout import KeypointLayout, LayoutError, choose_layout
from pose.data.shards import (
    FORMAT_VERSION,
    Sample,
    ShardEntry,
    ShardFolder,
    ShardManifest,
    meta_vector,
    shard_name,
    write_shard,
)
from pose.files import sha256_file


class ShardingError(RuntimeError):
    """Bad input or a conflicting output folder: reported before (or instead of) work."""


@dataclass(frozen=True)
class ShardRequest:
    """What to shard and how; `data_prep.shard_coco --help` explains each option."""

    annotations: Path
    images: Path
    out: Path
    split: str = "train"
    detections: Path | None = None  # person detections instead of ground-truth boxes
    det_thr: float = 0.0
    workers: int = 1
    strict: bool = False  # any bad instance is an error
    shard_size: int = 1000
    shard_mb: float = 0.0  # about this many MB per shard instead of shard_size
    detail: tuple[int, int] = (384, 288)  # (height, width) of the recipe whose detail crops keep
    context_scale: float = 1.35
    context_rotation: float = 45.0
    quality: int = 95
    restart_mcus: int = RESTART_MCUS
    seed: int = 0
    layout: str = "auto"  # a preset name, a layout YAML file, or auto: from the annotation file
    overwrite: bool = False
    progress: bool = True


@dataclass(frozen=True)
class ShardResult:
    out: Path
    num_samples: int
    num_shards: int
    skipped: dict[str, int]  # instances left out, by reason
    cropped: int  # instances cropped by this call (0: the folder already held the result)
    resumed_shards: int  # shards an interrupted earlier call had finished
    seconds: float
    manifest: ShardManifest = field(repr=False)
    layout: KeypointLayout | None = None  # the layout chosen, for the summary
    notes: tuple[str, ...] = ()  # what the user should know about that choice
    # the first few image files skipped for each image reason (missing, truncated, ...), named
    skipped_images: dict[str, list[str]] = field(default_factory=dict)


@dataclass(frozen=True)
class ShardParams:
    """Everything that decides the content of the shards: recorded in the manifest and
    compared when a folder is reused."""

    split: str
    annotations: str
    annotations_sha256: str
    images: str  # the image folder (resolved): another folder is another input
    detections: str | None
    detections_sha256: str | None
    det_thr: float
    detail: tuple[int, int]
    padding: float
    context_scale: float
    context_rotation: float
    jpeg_quality: int
    jpeg_restart_mcus: int  # restart interval cap (pose/data/jpeg.py); 0: crops decode whole
    shard_size: int
    seed: int
    layout: str  # as requested; the layout itself is in the manifest

    @property
    def aspect_ratio(self) -> float:
        return self.detail[1] / self.detail[0]

    @property
    def context(self) -> tuple[float, float]:
        return augmentation_context(self.aspect_ratio, self.context_scale, self.context_rotation)

    def as_json(self) -> dict:
        return {**asdict(self), "detail": list(self.detail), "version": FORMAT_VERSION}


def shard_dataset(request: ShardRequest) -> ShardResult:
    """Shard as `request` says (resuming an interrupted run with the same parameters)."""
    start = time.perf_counter()
    params = make_params(request)
    if not Path(request.images).is_dir():
        raise ShardingError(f"image folder '{request.images}' does not exist")
    instances, skipped, layout, notes = select_instances(request, params)
    chosen = {"layout": layout, "notes": tuple(notes)}
    if request.shard_mb:
        size = estimate_shard_size(instances, params, Path(request.images), request.shard_mb)
        params = replace(params, shard_size=size)
    out = Path(request.out)
    if prepare_output(out, params, request.overwrite):
        manifest = ShardFolder(out).read_manifest()
        return _result(out, manifest, 0, 0, time.perf_counter() - start, **chosen)
    chunks = [
        instances[i : i + params.shard_size] for i in range(0, len(instances), params.shard_size)
    ]
    done = ShardFolder(out).finished_records()
    jobs = [
        ShardJob(i, chunk, params, str(request.images), str(out), request.strict)
        for i, chunk in enumerate(chunks)
        if i not in done
    ]
    records = dict(done)
    todo = sum(len(job.instances) for job in jobs)
    bar = tqdm(total=todo, desc=f"shard {params.split}", unit="inst", disable=not request.progress)
    with bar:
        for index, record in _run_jobs(jobs, request.workers, bar):
            records[index] = record
    ordered = [records[i] for i in range(len(chunks))]
    manifest = _finish(out, params, ordered, skipped, layout)
    named = named_skips(ordered, Path(request.images))
    seconds = time.perf_counter() - start
    return _result(out, manifest, todo, len(done), seconds, skipped_images=named, **chosen)


def _result(
    out: Path, manifest: ShardManifest, cropped: int, resumed: int, seconds: float, **chosen
) -> ShardResult:
    return ShardResult(
        **chosen,
        out=out,
        num_samples=manifest.num_samples,
        num_shards=len(manifest.shards),
        skipped=dict(manifest.skipped),
        cropped=cropped,
        resumed_shards=resumed,
        seconds=seconds,
        manifest=manifest,
    )


def make_params(request: ShardRequest) -> ShardParams:
    ann = Path(request.annotations)
    if not ann.is_file():
        raise ShardingError(f"annotation file '{ann}' does not exist")
    dets = Path(request.detections) if request.detections else None
    if dets and request.split == "train":
        raise ShardingError(
            "detections are for evaluation splits; training uses ground-truth boxes"
        )
    if dets and not dets.is_file():
        raise ShardingError(f"detections file '{dets}' does not exist")
    return ShardParams(
        split=request.split,
        annotations=str(ann.resolve()),
        annotations_sha256=sha256_file(ann),
        images=str(Path(request.images).resolve()),
        detections=str(dets.resolve()) if dets else None,
        detections_sha256=sha256_file(dets) if dets else None,
        det_thr=request.det_thr,
        detail=tuple(request.detail),
        padding=1.25,
        context_scale=request.context_scale,
        context_rotation=request.context_rotation,
        jpeg_quality=request.quality,
        jpeg_restart_mcus=request.restart_mcus,
        shard_size=request.shard_size,
        seed=request.seed,
        layout=request.layout,
    )


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


def read_image(path: Path, expected_wh: tuple[int, int]) -> tuple[np.ndarray | None, str | None]:
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
    if (image.shape[1], image.shape[0]) != tuple(expected_wh):
        return None, "image_size_mismatch"
    return image, None


def crop_region(image: np.ndarray, window: tuple[int, int, int, int], size) -> np.ndarray:
    """The image inside `window` (black outside the image), resized to `size` (w, h)."""
    x0, y0, x1, y1 = window
    region = np.zeros((y1 - y0, x1 - x0, 3), np.uint8)
    height, width = image.shape[:2]
    sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
    if sx1 > sx0 and sy1 > sy0:
        region[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = image[sy0:sy1, sx0:sx1]
    if size != (x1 - x0, y1 - y0):
        region = cv2.resize(region, size, interpolation=cv2.INTER_AREA)
    return region


def crop_sample(image: np.ndarray, inst: PersonInstance, params: ShardParams) -> Sample:
    """The stored crop of one person and its keypoints, affine and record."""
    center, scale = box_to_center_scale(inst.bbox, params.aspect_ratio, params.padding)
    window, size = crop_window(center, scale, params.context, params.detail[0])
    jpg = encode_crop(
        crop_region(image, window, size), params.jpeg_quality, params.jpeg_restart_mcus
    )
    if jpg is None:
        raise ShardingError(f"cv2 could not encode the crop of {inst.key}")
    to_image = window_to_image_affine(window, size)
    to_crop = invert_affine(to_image)
    keypoints = inst.keypoints.astype(np.float64).copy()
    labelled = keypoints[:, 2] > 0
    keypoints[labelled, :2] = affine_points(to_crop, keypoints[labelled, :2])
    keypoints[~labelled] = 0.0
    box_center = affine_points(to_crop, center[None])[0]
    meta = meta_vector(
        image_id=inst.image_id,
        ann_id=-1 if inst.ann_id is None else inst.ann_id,
        det_id=-1 if inst.det_id is None else inst.det_id,
        score=inst.score,
        area=inst.area,
        center_x=box_center[0],
        center_y=box_center[1],
        scale_w=scale[0] / to_image[0, 0],  # the padded box in crop pixels
        scale_h=scale[1] / to_image[1, 1],
    )
    record = {
        "image_id": inst.image_id,
        "file_name": inst.file_name,
        "bbox": [round(float(v), 3) for v in inst.bbox],
        "center": [float(v) for v in center],
        "scale": [float(v) for v in scale],
        "image_wh": list(inst.image_wh),
        "area": float(inst.area),
        "score": float(inst.score),
        **({"ann_id": inst.ann_id} if inst.ann_id is not None else {"det_id": inst.det_id}),
    }
    return Sample(inst.key, jpg, keypoints.astype(np.float32), to_image, meta, record)


# ------------------------------------------------------------------------------------------
# One shard (runs in a worker process)
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShardJob:
    index: int
    instances: list[PersonInstance]
    params: ShardParams
    images_dir: str
    out: str
    strict: bool

    @property
    def name(self) -> str:
        return shard_name(self.params.split, self.index)


_progress_queue = None


def _init_worker(progress_queue) -> None:
    global _progress_queue
    _progress_queue = progress_queue


def crop_shard(job: ShardJob) -> dict:
    """Crop the instances of one shard (each image decoded once), write the tar and its index,
    then the shard's record (what resuming reads). Returns the record."""
    by_image: dict[str, list[PersonInstance]] = defaultdict(list)
    for inst in job.instances:
        by_image[inst.file_name].append(inst)
    samples: dict[str, Sample] = {}
    skipped: Counter = Counter()
    images: dict[str, list[str]] = defaultdict(list)  # a few file names for each reason
    for file_name, people in by_image.items():
        image, reason = read_image(Path(job.images_dir) / file_name, people[0].image_wh)
        if reason and job.strict:
            ids = ", ".join(str(p.ann_id if p.ann_id is not None else p.det_id) for p in people)
            raise ShardingError(f"{reason}: image '{file_name}' (annotation ids {ids})")
        if reason:
            skipped[reason] += len(people)
            if len(images[reason]) < NAMED_SKIPS:
                images[reason].append(file_name)
        else:
            samples |= {inst.key: crop_sample(image, inst, job.params) for inst in people}
        _report(len(people))
    ordered = [samples[inst.key] for inst in job.instances if inst.key in samples]
    record = {"entry": None, "skipped": dict(skipped), "skipped_images": dict(images)}
    if ordered:
        record["entry"] = write_shard(Path(job.out), job.name, ordered).as_json()
    ShardFolder(job.out).write_record(job.name, record)
    return record


NAMED_SKIPS = 3  # image files named per reason of a skip


def named_skips(records: list[dict], images_dir: Path) -> dict[str, list[str]]:
    """The first NAMED_SKIPS image paths skipped for each reason, over the shards' records."""
    named: dict[str, list[str]] = defaultdict(list)
    for record in records:
        for reason, files in record.get("skipped_images", {}).items():
            named[reason] += [str(images_dir / f) for f in files]
    return {reason: files[:NAMED_SKIPS] for reason, files in named.items()}


def _report(count: int) -> None:
    if _progress_queue is not None:
        _progress_queue.put(count)


# ------------------------------------------------------------------------------------------
# The whole run
# ------------------------------------------------------------------------------------------


def select_instances(
    request: ShardRequest, params: ShardParams
) -> tuple[list[PersonInstance], Counter, KeypointLayout, list[str]]:
    """Instances to crop (ground-truth boxes or detections), shuffled, skips by reason, the
    keypoint layout and notes on its choice."""
    coco = index_coco(request.annotations)  # annotations streamed, never all in memory
    layout, notes = dataset_layout(coco, request)
    source = request.detections or request.annotations

    def strict_skip(reason: str, what: str) -> None:
        raise ShardingError(f"{reason}: {what} in '{source}'")

    on_skip = strict_skip if request.strict else None
    joints = layout.num_joints
    if request.detections:
        found = detection_instances(coco, request.detections, request.det_thr, on_skip, joints)
    else:
        found = training_instances(coco, on_skip=on_skip, num_joints=joints)
    instances, skipped = found
    if not instances:
        raise ShardingError(
            f"no instances to shard from '{source}' (skipped: {dict(skipped) or 'none'})"
        )
    order = np.random.default_rng(params.seed).permutation(len(instances))
    return [instances[i] for i in order], skipped, layout, notes


def dataset_layout(coco, request: ShardRequest) -> tuple[KeypointLayout, list[str]]:
    """`request.layout` checked against the annotation file's person category, or with `auto`
    the category's own (pose/data/layout.py `choose_layout`), and notes for the user."""
    try:
        return choose_layout(person_category(coco), request.layout, str(request.annotations))
    except LayoutError as e:
        raise ShardingError(str(e)) from None


def prepare_output(out: Path, params: ShardParams, overwrite: bool) -> bool:
    """Make `out` ready. Returns True when it already holds the finished result of the same
    parameters; else, with `overwrite`, clears what a sharding run left there, or resumes an
    unfinished run with the same parameters, and refuses anything else."""
    now = params.as_json()
    folder = ShardFolder(out)
    recorded, finished = folder.recorded_params()
    if recorded == now and finished:
        return True  # the same result: nothing to redo, with or without --overwrite
    if overwrite:
        folder.clear()
    elif recorded == now:
        pass  # resume the unfinished run
    elif recorded is not None or (out.is_dir() and folder.shard_files()):
        what = "shards made" if finished else "an unfinished run"
        detail = (
            f"differences: {_diff(recorded, now)}" if recorded else "tar files of unknown origin"
        )
        raise ShardingError(
            f"'{out}' holds {what} with other parameters; use a new --out folder or "
            f"--overwrite ({detail})"
        )
    folder.start(now)
    return False


def _diff(previous: dict, now: dict) -> str:
    keys = sorted(k for k in set(previous) | set(now) if previous.get(k) != now.get(k))
    return ", ".join(f"{k}: {previous.get(k)!r} -> {now.get(k)!r}" for k in keys)


def estimate_shard_size(
    instances: list[PersonInstance], params: ShardParams, images_dir: Path, megabytes: float
) -> int:
    """Samples per shard for shards of about `megabytes`, from the mean size of the first
    (shuffled) instances' samples. An estimate: shards come out near, not at, that size."""
    sizes = []
    for inst in instances[:32]:
        image, _ = read_image(images_dir / inst.file_name, inst.image_wh)
        if image is not None:
            sizes.append(sum(len(d) + 1024 for _, d in crop_sample(image, inst, params).members()))
    if not sizes:
        raise ShardingError("--shard-mb: none of the first instances could be read to estimate")
    return max(1, int(megabytes * 1e6 / float(np.mean(sizes))))


def _run_jobs(jobs: list[ShardJob], workers: int, bar: tqdm) -> Iterator[tuple[int, dict]]:
    """Yield (shard index, record) as shards finish, updating the bar per image."""
    if workers <= 1:
        global _progress_queue
        _progress_queue = _BarQueue(bar)
        try:
            for job in jobs:
                yield job.index, crop_shard(job)
        finally:
            _progress_queue = None
        return
    context = mp.get_context("spawn")
    progress = context.Queue()
    waiting = iter(jobs)
    with context.Pool(workers, initializer=_init_worker, initargs=(progress,)) as pool:
        # a few jobs queued a worker, not all of them: each queued job is a pickled copy of
        # its instances, so queueing all would double the instances' memory
        pending = {}
        while True:
            while len(pending) < 2 * workers and (job := next(waiting, None)) is not None:
                pending[job.index] = pool.apply_async(crop_shard, (job,))
            if not pending:
                break
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


def _finish(
    out: Path, params: ShardParams, records: list[dict], skipped: Counter, layout: KeypointLayout
) -> ShardManifest:
    """The manifest over the shard records, and the run's resume state removed (also when
    nothing could be written: a failed run leaves nothing to resume)."""
    total_skipped = Counter(skipped)
    for record in records:
        total_skipped.update(record["skipped"])
    entries = [ShardEntry(**r["entry"]) for r in records if r["entry"]]
    folder = ShardFolder(out)
    if not entries:
        folder.clear()
        raise ShardingError(f"every instance was skipped ({dict(total_skipped)}); nothing written")
    return folder.write_manifest(entries, dict(total_skipped), params.as_json(), layout)
