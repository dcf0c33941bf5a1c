"""What every benchmark here does to compare variants fairly: the variants take turns, one
measurement each per round, so drift of the machine (clocks, caches, the other core) hits them
all alike rather than whichever ran last."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


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
