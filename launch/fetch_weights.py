"""Fetch the published weights a run or prediction starts from, once, on a machine that is online:
timm's backbone weights (`model.pretrained: timm:NAME` in the COCO recipes) into the Hugging Face
hub's cache, and torchvision's person detectors into torch's. Training never downloads: it reads
these caches (under the project's .cache/ in a checkout), which can be copied to machines that
are offline; prediction downloads a detector it lacks when the machine is online.

    python launch/fetch_weights.py --config configs/coco_vitpose_b_256x192.yaml   # its backbone
    python launch/fetch_weights.py timm:resnet50.tv_in1k --detector fasterrcnn_resnet50_fpn_v2

Exit 2, with one line, when something cannot be fetched (offline, say).
"""

from __future__ import annotations

import argparse
import sys

from pose.caches import use_cache_folders
from pose.config import ConfigError, load_config
from pose.inference.detector import DetectorError, fetch_detector_weights
from pose.models.weights import TIMM_PREFIX, WeightsError, fetch_timm_weights


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="timm:NAME weights to fetch")
    parser.add_argument("--config", action="append", default=[], help="fetch its pretrained")
    parser.add_argument("--detector", action="append", default=[], help="a torchvision detector")
    args = parser.parse_args(argv)
    use_cache_folders()
    try:
        names = [*args.names, *(load_config(c).model.pretrained for c in args.config)]
        timm = [n.removeprefix(TIMM_PREFIX) for n in names if n.startswith(TIMM_PREFIX)]
        if not timm and not args.detector:
            parser.error("nothing to fetch: give timm:NAME, --config with one, or --detector")
        for name in timm:
            print(f"fetch: {TIMM_PREFIX}{name} -> {fetch_timm_weights(name)}")
        for name in args.detector:
            print(f"fetch: detector {name} -> {fetch_detector_weights(name)}")
    except (ConfigError, WeightsError, DetectorError) as e:
        print(f"fetch: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
