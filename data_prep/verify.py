"""Check a shard folder against its manifest: every shard present with the right size, hash and
sample count, every sample complete, every image decodable, every index file consistent.

    python -m data_prep.verify OUT

Prints each problem with its shard (and key) and exits 1 if there is any."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pose.data.shards import check_shards


def verify(folder: str | Path, decode_images: bool = True) -> list[str]:
    """Problems found in a shard folder, as readable lines (empty when all is well)."""
    return check_shards(folder, decode_images)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", help="shard folder (made by data_prep.shard_coco)")
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
