"""Training curves of several variants with their seed spread (what sweep comparisons plot)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def spread_plot(curves: dict[str, list[tuple[np.ndarray, np.ndarray]]], path: Path, title: str,
                xlabel: str, ylabel: str, log_y: bool = False) -> Path:  # fmt: skip
    """One line per variant (the mean over its runs, e.g. seeds) with a band from the lowest to
    the highest run; runs are put on the x values of the shortest one."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    for label, runs in curves.items():
        runs = [(np.asarray(x, float), np.asarray(y, float)) for x, y in runs if len(x)]
        if not runs:
            continue
        grid = min((x for x, _ in runs), key=len)
        ys = np.stack([np.interp(grid, x, y) for x, y in runs])
        (line,) = ax.plot(grid, ys.mean(0), label=f"{label} (n={len(runs)})", lw=1.6,
                          marker="o" if len(grid) < 12 else None, ms=3)  # fmt: skip
        if len(runs) > 1:
            ax.fill_between(grid, ys.min(0), ys.max(0), color=line.get_color(), alpha=0.2, lw=0)
    if log_y:
        ax.set_yscale("log")
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
