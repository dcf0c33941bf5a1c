"""The image warp of the input pipelines, kernel against kernel, on one CPU thread: DALI's CPU
`fn.warp_affine` (linear, as the pipeline uses it, and nearest neighbour), DALI's CPU
`fn.resize` (linear, region of interest: what a warp without rotation amounts to) and cv2's
`warpAffine` (linear, the torch backend's). Same crops, same matrix (scale 0.7, rotation 16°),
256x192 output, batches of 32.

    python benchmarks/warp_kernels.py [--crop 460] [--rounds 7] [--json OUT]

This is why DALI's CPU mode cannot come near the torch backend: its warp alone costs several
times the torch backend's whole sample.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import cv2
import numpy as np

from pose.timing import take_turns

BATCH, OUT_H, OUT_W = 32, 256, 192


def dali_pipeline(images: list[np.ndarray], kind: str, matrix: np.ndarray):
    from nvidia.dali import fn, pipeline_def, types

    @pipeline_def(batch_size=BATCH, num_threads=1, device_id=None, prefetch_queue_depth=1)
    def graph():
        image = fn.external_source(source=lambda: images, batch=True, layout="HWC")
        if kind == "resize":
            return fn.resize(
                image,
                size=[OUT_H, OUT_W],
                antialias=False,
                roi_start=[20.5, 30.5],
                roi_end=[380.0, 300.0],
                interp_type=types.INTERP_LINEAR,
            )
        interp = types.INTERP_NN if kind == "warp-nn" else types.INTERP_LINEAR
        return fn.warp_affine(
            image,
            matrix=matrix.ravel().tolist(),
            size=[OUT_H, OUT_W],
            inverse_map=False,
            fill_value=0,
            interp_type=interp,
        )

    pipe = graph()
    pipe.build()
    return pipe.run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--crop", type=int, default=460, help="side of the square input crops")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    cv2.setNumThreads(1)
    rng = np.random.default_rng(0)
    # Smooth random images (blurred noise), as cheap or dear to sample as photographs.
    images = [
        cv2.GaussianBlur(rng.integers(0, 256, (args.crop, args.crop, 3), np.uint8), (0, 0), 3)
        for _ in range(BATCH)
    ]
    t = np.deg2rad(16.0)
    matrix = np.array(
        [[0.7 * np.cos(t), 0.7 * np.sin(t), 10.0], [-0.7 * np.sin(t), 0.7 * np.cos(t), 60.0]],
        np.float32,
    )

    def cv2_batch():
        for image in images:
            cv2.warpAffine(image, matrix.astype(np.float64), (OUT_W, OUT_H), flags=cv2.INTER_LINEAR)

    runs = {
        "cv2 warpAffine (linear)": cv2_batch,
        "dali warp_affine (linear)": dali_pipeline(images, "warp", matrix),
        "dali warp_affine (nearest)": dali_pipeline(images, "warp-nn", matrix),
        "dali resize (linear, roi)": dali_pipeline(images, "resize", matrix),
    }

    def ms_per_image(run):
        start = time.perf_counter()
        run()
        return (time.perf_counter() - start) / BATCH * 1e3

    times = take_turns(
        {name: (lambda r=run: ms_per_image(r)) for name, run in runs.items()}, args.rounds
    )
    base = float(np.median(times["cv2 warpAffine (linear)"]))
    print(
        f"\n{args.crop}x{args.crop} crops -> {OUT_H}x{OUT_W}, one thread, median of "
        f"{args.rounds} rounds"
    )
    print(f"{'kernel':>28} {'ms per image':>13} {'vs cv2':>8}")
    results = {}
    for name, values in times.items():
        ms = float(np.median(values))
        results[name] = {"ms_per_image": round(ms, 3), "vs_cv2": round(ms / base, 2)}
        print(f"{name:>28} {ms:>13.3f} {ms / base:>7.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps({"crop": args.crop, **results}, indent=1))


if __name__ == "__main__":
    main()
