"""Timing that compares variants fairly, for benchmarks/ and the GPU check: the variants take
turns, one measurement each per round, so drift of the machine (clocks, caches, the other core)
hits them all alike rather than whichever ran last; a GPU is synchronised at both ends of a
timed stretch."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch


def take_turns(
    variants: dict[str, Callable[[], Any]], rounds: int, warmup: int = 1
) -> dict[str, list[Any]]:
    """Each variant's results over `rounds` rounds, after `warmup` unrecorded calls each (page
    cache, pipeline builds, lazy imports)."""
    for run in variants.values():
        for _ in range(warmup):
            run()
    results: dict[str, list[Any]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, run in variants.items():
            results[name].append(run())
    return results


def timed(step, steps: int) -> float:
    """Seconds per step over `steps` steps (synchronising a GPU at both ends)."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def interleaved(variants: dict, steps: int, rounds: int, warmup: int = 3) -> dict[str, float]:
    """Median seconds per step of each variant over `rounds` rounds of `steps` steps, the
    variants taking turns (turns.py), after `warmup` steps each."""
    timers = {name: (lambda step=step: timed(step, steps)) for name, step in variants.items()}
    for step in variants.values():
        for _ in range(warmup):
            step()
    samples = take_turns(timers, rounds, warmup=0)
    return {name: statistics.median(values) for name, values in samples.items()}
