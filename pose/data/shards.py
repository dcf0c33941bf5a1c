"""The shard format, both sides: WebDataset tars of person crops with their DALI indices, the
manifest that lists them, writing and reading both, and checking a shard folder.

A sample is five tar members sharing a key without dots (DALI takes the extension from the first
dot): `KEY.jpg` (the crop), `KEY.kpts.npy` (K x 3 float32: x, y in crop pixels, visibility),
`KEY.affine.npy` (2 x 3 float32: crop pixels -> original image pixels), `KEY.meta.npy` (the
numbers a pipeline needs, float64, laid out as META_FIELDS: a variable-length JSON cannot pass
through DALI's iterator) and `KEY.json` (ids, box, center, scale, image size, area, score).

A shard folder holds `<split>-NNNNNN.tar` with its `.idx` (DALI's wds2idx v1.2) and
`manifest.json`: the sample count of every shard, its size and sha256, the samples skipped by
reason, the keypoint layout (pose/data/layout.py), the parameters the shards were made with and
the format version. Readers refuse other versions.
"""

from __future__ import annotations

import io
import json
import math
import shutil
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pose.data.jpeg import decode_rgb
from pose.data.layout import KeypointLayout, LayoutError
from pose.files import atomic_write, sha256_bytes, sha256_file

FORMAT_VERSION = 2  # of the sample layout; readers refuse other versions
COMPONENTS = ("jpg", "kpts.npy", "affine.npy", "meta.npy", "json")
# meta.npy: ids and scores for evaluation, and the padded box in crop pixels for augmentation.
META_FIELDS = (
    "image_id",
    "ann_id",
    "det_id",
    "score",
    "area",
    "center_x",
    "center_y",
    "scale_w",
    "scale_h",
)
META = {name: i for i, name in enumerate(META_FIELDS)}
MANIFEST = "manifest.json"
INDEX_VERSION = "v1.2"  # DALI's wds2idx format
TAR_BLOCK = 512


class ShardError(RuntimeError):
    """A shard folder or shard is unusable; the message names the shard (and key)."""


# ------------------------------------------------------------------------------------------
# Writing
# ------------------------------------------------------------------------------------------


def meta_vector(**fields: float) -> np.ndarray:
    """meta.npy of one sample, every field of META_FIELDS given by name."""
    missing = [name for name in META_FIELDS if name not in fields]
    unknown = [name for name in fields if name not in META]
    if missing or unknown:
        raise ValueError(f"meta fields missing: {missing}, unknown: {unknown}")
    return np.array([fields[name] for name in META_FIELDS], dtype=np.float64)


@dataclass
class Sample:
    key: str
    jpg: bytes
    keypoints: np.ndarray  # (K, 3) float32
    affine: np.ndarray  # (2, 3) float32
    meta: np.ndarray  # meta_vector(...)
    record: dict

    def members(self) -> list[tuple[str, bytes]]:
        return [
            (f"{self.key}.jpg", self.jpg),
            (f"{self.key}.kpts.npy", npy_bytes(self.keypoints.astype(np.float32))),
            (f"{self.key}.affine.npy", npy_bytes(self.affine.astype(np.float32))),
            (f"{self.key}.meta.npy", npy_bytes(self.meta.astype(np.float64))),
            (f"{self.key}.json", json.dumps(self.record, sort_keys=True).encode()),
        ]


@dataclass(frozen=True)
class ShardEntry:
    """One shard as the manifest lists it."""

    name: str
    index: str
    num_samples: int
    bytes: int
    sha256: str

    def as_json(self) -> dict:
        return dict(vars(self))


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def build_shard(samples: list[Sample]) -> tuple[bytes, str]:
    """The tar bytes of `samples` and its DALI index text (offsets of each member's data)."""
    buffer = io.BytesIO()
    lines = [f"{INDEX_VERSION} {len(samples)}"]
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for sample in samples:
            fields = []
            for name, data in sample.members():
                info = tarfile.TarInfo(name)
                info.size, info.mode, info.mtime = len(data), 0o644, 0
                header_offset = buffer.tell()
                tar.addfile(info, io.BytesIO(data))
                extension = name.split(".", 1)[1]
                fields.append(f"{extension} {header_offset + TAR_BLOCK} {len(data)} {name}")
            lines.append(" ".join(fields))
    return buffer.getvalue(), "\n".join(lines) + "\n"


def write_shard(folder: Path, name: str, samples: list[Sample]) -> ShardEntry:
    """Write `name`.tar and its index into `folder`, each durably and atomically (index
    first: a tar on disk always has its index)."""
    tar_bytes, index_text = build_shard(samples)
    atomic_write(folder / f"{name}.idx", index_text, durable=True)
    atomic_write(folder / f"{name}.tar", tar_bytes, durable=True)
    return ShardEntry(
        f"{name}.tar", f"{name}.idx", len(samples), len(tar_bytes), sha256_bytes(tar_bytes)
    )


@dataclass
class ShardManifest:
    """What manifest.json holds: the sample count, the keypoint layout, each shard, what was
    skipped and why, the parameters the samples were made with (with the format version), and
    the components and meta fields of a sample."""

    num_samples: int
    shards: list[ShardEntry]
    skipped: dict[str, int]
    params: dict
    layout: dict | None = None  # KeypointLayout.to_json(); older folders have none
    components: list[str] = field(default_factory=lambda: list(COMPONENTS))
    meta_fields: list[str] = field(default_factory=lambda: list(META_FIELDS))

    def to_json(self) -> dict:
        data = {
            "num_samples": self.num_samples,
            "layout": self.layout,
            "shards": [e.as_json() for e in self.shards],
            "skipped": dict(sorted(self.skipped.items())),
            "params": self.params,
            "components": self.components,
            "meta_fields": self.meta_fields,
        }
        return {k: v for k, v in data.items() if v is not None}

    @classmethod
    def from_json(cls, data: dict, path: Path) -> ShardManifest:
        try:
            shards = [ShardEntry(**entry) for entry in data["shards"]]
            return cls(**{**data, "shards": shards})
        except (KeyError, TypeError) as e:
            raise ShardError(f"'{path}' is not a shard manifest ({e})") from None


class ShardFolder:
    """A shard folder's files, in one place: the manifest (written last: its presence means
    finished), the shards and their indices, and while a sharding run is unfinished its
    progress file (the parameters, for resuming) and one record per finished shard (.meta/)."""

    PROGRESS = ".progress.json"
    RECORDS = ".meta"

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @property
    def manifest(self) -> Path:
        return self.path / MANIFEST

    @property
    def progress(self) -> Path:
        return self.path / self.PROGRESS

    def is_finished(self) -> bool:
        return self.manifest.is_file()

    def shard_files(self) -> list[Path]:
        """Every shard and index file, listed by the manifest or not."""
        return sorted([*self.path.glob("*.tar"), *self.path.glob("*.idx")])

    def read_manifest(self) -> ShardManifest:
        """The manifest, with a clear error when there is none or it is of another version."""
        if not self.manifest.is_file():
            raise ShardError(f"'{self.path}' has no {MANIFEST}: not a finished shard folder")
        try:
            data = json.loads(self.manifest.read_text())
        except json.JSONDecodeError as e:
            raise ShardError(f"'{self.manifest}' is not valid JSON: {e}") from None
        manifest = ShardManifest.from_json(data, self.manifest)
        version = manifest.params.get("version")
        if version != FORMAT_VERSION:
            raise ShardError(
                f"shards in '{self.path}' have format version {version}, this code reads "
                f"version {FORMAT_VERSION}: shard them again (data_prep.shard_coco ... "
                "--overwrite)"
            )
        return manifest

    def write_manifest(
        self,
        entries: list[ShardEntry],
        skipped: dict[str, int],
        params: dict,
        layout: KeypointLayout,
    ) -> ShardManifest:
        """The manifest of the finished folder, written last; the run's resume state goes."""
        manifest = ShardManifest(
            num_samples=sum(e.num_samples for e in entries),
            shards=entries,
            skipped=dict(skipped),
            params={**params, "version": FORMAT_VERSION},
            layout=layout.to_json(),
        )
        atomic_write(self.manifest, json.dumps(manifest.to_json(), indent=1), durable=True)
        self.progress.unlink(missing_ok=True)
        shutil.rmtree(self.path / self.RECORDS, ignore_errors=True)
        return manifest

    def recorded_params(self) -> tuple[dict | None, bool]:
        """The parameters an earlier run recorded here, and whether that run finished."""
        for path, finished in ((self.manifest, True), (self.progress, False)):
            if path.is_file():
                try:
                    data = json.loads(path.read_text())
                except json.JSONDecodeError:
                    return {"unreadable": path.name}, finished
                return (data.get("params") if finished else data), finished
        return None, False

    def start(self, params: dict) -> None:
        """A sharding run begins (or resumes): its parameters recorded for resuming."""
        (self.path / self.RECORDS).mkdir(parents=True, exist_ok=True)
        atomic_write(self.progress, json.dumps(params))

    def write_record(self, name: str, record: dict) -> None:
        """What a finished shard `name` contributes (its entry, its skips), for resuming."""
        atomic_write(self.path / self.RECORDS / f"{name}.json", json.dumps(record))

    def finished_records(self) -> dict[int, dict]:
        """The records of shards an earlier run finished whose files are intact, by index."""
        done = {}
        for path in (self.path / self.RECORDS).glob("*.json"):
            record = json.loads(path.read_text())
            if "entry" not in record:  # written by an older version: crop that shard again
                continue
            entry = record["entry"]
            tar = None if entry is None else self.path / entry["name"]
            if entry is None or (tar.is_file() and tar.stat().st_size == entry["bytes"]):
                done[int(path.stem.rsplit("-", 1)[1])] = record
        return done

    def clear(self) -> None:
        """Remove everything a sharding run writes here (nothing else)."""
        for path in [*self.shard_files(), self.manifest, self.progress]:
            path.unlink(missing_ok=True)
        shutil.rmtree(self.path / self.RECORDS, ignore_errors=True)


# ------------------------------------------------------------------------------------------
# Reading
# ------------------------------------------------------------------------------------------


def shard_name(split: str, index: int) -> str:
    """The name (without extension) of shard `index` of `split`: `<split>-NNNNNN`."""
    return f"{split}-{index:06d}"


def is_shard_folder(folder: str | Path) -> bool:
    """Whether `folder` holds finished shards (a manifest; `read_manifest` checks it)."""
    return ShardFolder(folder).is_finished()


def read_manifest(folder: str | Path) -> ShardManifest:
    """The manifest of a shard folder, with a clear error when there is none."""
    return ShardFolder(folder).read_manifest()


@dataclass(frozen=True)
class ShardSet:
    """The shards of one split, as listed by its manifest, and their keypoint layout."""

    folder: Path
    tars: list[Path]
    indices: list[Path]
    counts: list[int]
    layout: KeypointLayout

    @classmethod
    def open(cls, folder: str | Path) -> ShardSet:
        """The shards a manifest lists, checked cheaply against it (files present, sizes, index
        headers, each shard's first sample sized by the layout); `check_shards` reads all."""
        folder = Path(folder)
        manifest = read_manifest(folder)
        shards = manifest.shards
        tars = [folder / s.name for s in shards]
        missing = [str(p) for p in tars if not p.is_file()]
        if missing:
            raise ShardError(f"shards listed in {folder}/{MANIFEST} are missing: {missing}")
        layout = manifest_layout(manifest, folder, tars[0], folder / shards[0].index)
        for tar, shard in zip(tars, shards):
            if tar.stat().st_size != shard.bytes:
                raise ShardError(
                    f"shard '{tar}' has {tar.stat().st_size} bytes, {folder}/{MANIFEST} says "
                    f"{shard.bytes} (a damaged or replaced file: data_prep.verify checks all)"
                )
            index = folder / shard.index
            _check_index_header(index, shard.num_samples)
            joints = first_sample_joints(tar, index)
            if joints != layout.num_joints:
                raise ShardError(
                    f"shard '{tar}' holds samples of {joints} joints, its manifest's layout "
                    f"'{layout.name}' {layout.num_joints}: shards of two layouts in one folder"
                )
        indices = [folder / s.index for s in shards]
        return cls(folder, tars, indices, [s.num_samples for s in shards], layout)

    @property
    def num_samples(self) -> int:
        return sum(self.counts)

    def image_ids(self) -> set[int]:
        """The ids of the images the samples were cropped from (their keys begin with it)."""
        ids = set()
        for index in self.indices:
            for key in ShardIndex(index).keys:
                head = key.split("_", 1)[0]
                if head.isdigit():
                    ids.add(int(head))
        return ids

    def rank_range(self, rank: int, world: int) -> tuple[int, int]:
        """The contiguous sample range of a rank, as DALI's reader cuts it
        (shard_id / num_shards over the concatenated shards)."""
        n = self.num_samples
        return n * rank // world, n * (rank + 1) // world

    def rank_batches(self, rank: int, world: int, batch_size: int) -> int:
        """Batches that read a rank's whole range once, the last one partial (evaluation)."""
        start, stop = self.rank_range(rank, world)
        return math.ceil((stop - start) / batch_size)

    def rank_segments(self, rank: int, world: int) -> list[tuple[int, int, int]]:
        """(shard, first, stop) sample ranges inside each shard that make up a rank's range."""
        start, stop = self.rank_range(rank, world)
        segments, offset = [], 0
        for shard, count in enumerate(self.counts):
            lo, hi = max(start - offset, 0), min(stop - offset, count)
            if lo < hi:
                segments.append((shard, lo, hi))
            offset += count
        return segments


def manifest_layout(
    manifest: ShardManifest, folder: Path, tar: Path, index: Path
) -> KeypointLayout:
    """The manifest's keypoint layout; an error naming the fix when it records none (shards made
    before layouts were recorded): what each joint is is never guessed from a count."""
    if manifest.layout is None:
        joints = first_sample_joints(tar, index)
        raise ShardError(
            f"{folder}/{MANIFEST} records no keypoint layout (its samples have {joints} joints; "
            "shards made before layouts were recorded): shard again (data_prep.shard_coco ... "
            "--overwrite, with --layout when the annotations do not say which joints they hold)"
        )
    try:
        return KeypointLayout.from_json(manifest.layout, f"{folder}/{MANIFEST}")
    except LayoutError as e:
        raise ShardError(str(e)) from None


def first_sample_joints(tar: Path, index: Path) -> int:
    """The joint count of a shard's first sample, read through its index (a few hundred bytes)."""
    try:
        with open(index) as f:
            f.readline()
            fields = f.readline().split()
        offset, size = index_members(fields)["kpts.npy"]
        with open(tar, "rb") as f:
            f.seek(offset)
            return int(decode_npy(f.read(size)).shape[0])
    except (OSError, ValueError, IndexError, KeyError) as e:
        raise ShardError(f"shard '{tar}' or its index '{index}' cannot be read: {e}") from None


def index_members(fields: list[str]) -> dict[str, tuple[int, int]]:
    """One line of a DALI index, split: extension -> (byte offset, size) of each member."""
    return {fields[k]: (int(fields[k + 1]), int(fields[k + 2])) for k in range(0, len(fields), 4)}


def _check_index_header(path: Path, count: int) -> None:
    try:
        with open(path) as f:
            header = f.readline().split()
    except (OSError, UnicodeDecodeError) as e:
        raise ShardError(f"index '{path}' cannot be read: {e}") from None
    if header != [INDEX_VERSION, str(count)]:
        raise ShardError(
            f"index '{path}' starts with {' '.join(header)!r}, expected '{INDEX_VERSION} {count}' "
            f"(damaged? data_prep.verify checks the folder)"
        )


class ShardIndex:
    """Where each sample's members lie in a shard, from its DALI index, so that a sample is
    read with one seek and one read (no tar headers parsed on the hot path)."""

    def __init__(self, index_path: Path):
        self.spans: list[tuple[int, int]] = []  # (first byte, end byte) of each sample
        self.members: list[dict[str, tuple[int, int]]] = []  # ext -> (offset, size) in span
        self.keys: list[str] = []
        try:
            for line in index_path.read_text().splitlines()[1:]:
                self._add(line.split())
        except (ValueError, IndexError, UnicodeDecodeError) as e:
            raise ShardError(f"index '{index_path}' is damaged: {e}") from None

    def _add(self, fields: list[str]) -> None:
        if not fields or len(fields) % 4:
            raise ValueError(f"a line of {len(fields)} fields")
        self.keys.append(fields[3].split(".", 1)[0])
        entries = index_members(fields)
        start = min(offset for offset, _ in entries.values())
        end = max(offset + size for offset, size in entries.values())
        self.spans.append((start, end))
        self.members.append({ext: (off - start, size) for ext, (off, size) in entries.items()})

    def read(self, stream, index: int) -> dict[str, bytes]:
        start, end = self.spans[index]
        stream.seek(start)
        data = stream.read(end - start)
        if len(data) != end - start:
            raise ShardError(f"sample #{index} runs past the end of the shard (truncated file?)")
        return {ext: data[off : off + size] for ext, (off, size) in self.members[index].items()}


def iter_samples(path: str | Path) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {extension: bytes}) for each sample of a shard, in order, streamed with
    webdataset's tar iterator; raises ShardError naming the shard on a damaged tar."""
    # Imported here: webdataset imports torch, which sharding workers need not start with.
    from webdataset.tariterators import group_by_keys, tar_file_iterator

    url = str(path)
    try:
        with open(path, "rb") as stream:
            members = ({**m, "__url__": url} for m in tar_file_iterator(stream))
            for sample in group_by_keys(members):
                parts = {k: v for k, v in sample.items() if not k.startswith("__")}
                yield sample["__key__"], parts
    except (tarfile.TarError, OSError, ValueError) as e:
        raise ShardError(f"shard '{path}' cannot be read: {e}") from None


_NPY_HEADERS: dict[bytes, tuple[np.dtype, tuple[int, ...], int]] = {}


def decode_npy(data: bytes) -> np.ndarray:
    """An .npy array from its bytes. Headers repeat across samples, so each distinct header is
    parsed once (np.load parses it with ast every time, a third of a small sample's cost)."""
    header_len = int.from_bytes(data[8:10], "little") if data[6:7] == b"\x01" else None
    key = data[: 10 + header_len] if header_len is not None else None
    if key is None or key not in _NPY_HEADERS:
        array = np.load(io.BytesIO(data), allow_pickle=False)
        if key is not None and not array.dtype.hasobject:
            _NPY_HEADERS[key] = (array.dtype, array.shape, len(key))
        return array
    dtype, shape, offset = _NPY_HEADERS[key]
    return np.frombuffer(data, dtype=dtype, offset=offset).reshape(shape)


# ------------------------------------------------------------------------------------------
# Checking a shard folder (data_prep.verify, and the DALI backend when a pipeline fails)
# ------------------------------------------------------------------------------------------


def check_shards(
    folder: str | Path, decode_images: bool = True, progress: bool = True
) -> list[str]:
    """Problems found in a shard folder, as readable lines (empty when all is well)."""
    folder = Path(folder)
    try:
        manifest = read_manifest(folder)
    except ShardError as e:
        return [str(e)]
    problems, total = [], 0
    num_joints = len(manifest.layout["joints"]) if manifest.layout else None
    for shard in tqdm(manifest.shards, desc="verify", unit="shard", disable=not progress):
        count, found = _check_shard(folder, shard.as_json(), decode_images, num_joints)
        total += count
        problems += found
    if total != manifest.num_samples:
        problems.append(f"{total} samples in all, manifest says {manifest.num_samples}")
    return problems


def _check_shard(
    folder: Path, shard: dict, decode_images: bool, num_joints: int | None
) -> tuple[int, list[str]]:
    """(samples found, problems) of one shard listed in the manifest."""
    path = folder / shard["name"]
    if not path.is_file():
        return 0, [f"{shard['name']}: missing"]
    problems = []
    if path.stat().st_size != shard["bytes"] or sha256_file(path) != shard["sha256"]:
        problems.append(f"{shard['name']}: size or sha256 differs from the manifest")
    count = 0
    try:
        for key, parts in iter_samples(path):
            count += 1
            found = _check_sample(parts, decode_images, num_joints)
            problems += [f"{shard['name']} {key}: {p}" for p in found]
    except ShardError as e:
        problems.append(str(e))
    if count != shard["num_samples"]:
        problems.append(f"{shard['name']}: {count} samples, manifest says {shard['num_samples']}")
    return count, problems + _check_index(folder / shard["index"], count, shard["name"])


def _check_sample(
    parts: dict[str, bytes], decode_images: bool, num_joints: int | None
) -> list[str]:
    missing = [c for c in COMPONENTS if c not in parts]
    if missing:
        return [f"missing components {missing}"]
    problems = []
    if decode_images and decode_rgb(parts["jpg"]) is None:
        problems.append("jpg does not decode")
    try:
        kpts, affine = decode_npy(parts["kpts.npy"]), decode_npy(parts["affine.npy"])
        meta = decode_npy(parts["meta.npy"])
        joints = num_joints or (kpts.shape[0] if kpts.ndim == 2 else -1)
        if kpts.shape != (joints, 3) or affine.shape != (2, 3):
            problems.append(
                f"keypoints {kpts.shape} / affine {affine.shape} have wrong shapes (the manifest "
                f"says {num_joints} joints)"
            )
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
