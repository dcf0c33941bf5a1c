"""Charts of measurements: training curves of several variants with their seed spread (what
sweep comparisons plot), and throughput bars with their spread over rounds (benchmarks)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    _pyplot().close(fig)
    return path


def spread_plot(
    curves: dict[str, list[tuple[np.ndarray, np.ndarray]]],
    path: Path,
    title: str,
    xlabel: str,
    ylabel: str,
    log_y: bool = False,
) -> Path:
    """One line per variant (the mean over its runs, e.g. seeds) with a band from the lowest to
    the highest run; runs are put on the x values of the shortest one."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    for label, runs in curves.items():
        runs = [(np.asarray(x, float), np.asarray(y, float)) for x, y in runs if len(x)]
        if not runs:
            continue
        grid = min((x for x, _ in runs), key=len)
        ys = np.stack([np.interp(grid, x, y) for x, y in runs])
        (line,) = ax.plot(
            grid,
            ys.mean(0),
            label=f"{label} (n={len(runs)})",
            lw=1.6,
            marker="o" if len(grid) < 12 else None,
            ms=3,
        )
        if len(runs) > 1:
            ax.fill_between(grid, ys.min(0), ys.max(0), color=line.get_color(), alpha=0.2, lw=0)
    if log_y:
        ax.set_yscale("log")
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def throughput_bars(
    rates: dict[str, list[float]], path: Path, title: str, xlabel: str, baseline: str
) -> Path:
    """One horizontal bar per variant at its median over rounds, a line from its lowest to its
    highest round, labelled with the median and its ratio to `baseline`'s median."""
    plt = _pyplot()
    names = list(rates)
    medians = [float(np.median(rates[n])) for n in names]
    base = float(np.median(rates[baseline]))
    fig, ax = plt.subplots(figsize=(6.4, 0.5 * len(names) + 1.2), dpi=120)
    ax.barh(names, medians, color="#4c72b0")
    for i, name in enumerate(names):
        ax.plot([min(rates[name]), max(rates[name])], [i, i], color="black", lw=1.2)
        ax.text(
            medians[i], i, f"  {medians[i]:.0f} ({medians[i] / base:.2f}x)", va="center", fontsize=8
        )
    ax.invert_yaxis()
    ax.set_xlim(0, max(max(r) for r in rates.values()) * 1.3)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel(xlabel)
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, path)
