"""Writing files that matter, and hashing them: the one atomic writer and the one hash helper.

A file is written to a temporary name in its folder and renamed over the target, so a reader
sees the old content or the new, never half of it. `durable=True` also flushes the data to the
disk before the rename (shards, the manifest: what a crash must not leave truncated)."""

from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import tempfile
from pathlib import Path


def atomic_write(path: str | os.PathLike, data: bytes | str, durable: bool = False) -> None:
    """Write `data` (text is UTF-8) to `path` atomically, making its folder if needed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; these files are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def refused_pickle(error: BaseException) -> str | None:
    """What a `torch.load(weights_only=True)` refused, in our words, or None for other errors.
    PyTorch's own message advises loading the file with `weights_only=False`, which would run
    whatever code it carries: that advice is not passed on."""
    text = str(error)
    if "Weights only load failed" not in text and "WeightsUnpickler error" not in text:
        return None
    found = re.search(
        r"WeightsUnpickler error: (.+?)(?: was not an allowed| Please use|\n|$)", text
    )
    what = found.group(1).strip().rstrip(".") if found else "objects other than tensors"
    return (
        f"refused to unpickle it ({what}): only tensors and plain data are read, since "
        "anything else could run code when loaded"
    )


NO_SPACE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
NO_SPACE_WORDS = ("No space left", "Disk quota exceeded", "File too large", "unexpected pos")


def out_of_space(error: BaseException, folder: str | os.PathLike, needed_bytes: int) -> str | None:
    """Why a write into `folder` failed when the cause is space (a full disk, a quota, a file
    size limit; torch's writer reports a short write as 'unexpected pos'), with the free space
    there and what was needed; None for other errors."""
    chain, seen = [], error
    while seen is not None and len(chain) < 10:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    space = any(getattr(e, "errno", None) in NO_SPACE_ERRNOS for e in chain) or any(
        word in str(e) for e in chain for word in NO_SPACE_WORDS
    )
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        free = None
    if not space and (free is None or free >= needed_bytes):
        return None
    shown = "unknown" if free is None else f"{free / 2**20:,.0f} MB"
    return (
        f"no space: the disk holding {folder} is full, or a quota or file-size limit stopped "
        f"the write ({shown} free there; this needs about {needed_bytes / 2**20:,.0f} MB)"
    )
