"""PNG plots of benchmark results, beside the tables in benchmarks/results/.

matplotlib is optional (`pip install -e ".[bench]"`); without it every
function prints that it skipped and returns None. Each plot shows the
baseline measured in the same run next to the kvmesh figure it judges.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

from kvmesh.bench.report import RESULTS_DIR

PERCENTILES = (50, 75, 90, 95, 99, 99.9)


def _pyplot():
    try:
        import matplotlib  # noqa: PLC0415

        matplotlib.use("Agg")  # files only, never a window
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        print("  (plots skipped: matplotlib is not installed; pip install -e '.[bench]')")
        return None
    return plt


def _save(plt, fig, name: str) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.png"
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"  (plot: {path})")
    return path


def throughput_vs_size(name: str, sizes_mib: Sequence[float], series: Mapping[str, Sequence[float]],
                       title: str) -> Path | None:
    """GB/s against transfer size (log2 x axis), one line per path or baseline."""
    plt = _pyplot()
    if plt is None:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for label, values in series.items():
        style = "--" if label.startswith("baseline") else "-"
        ax.plot(sizes_mib, values, style, marker="o", label=label)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("chunk size (MiB)")
    ax.set_ylabel("GB/s")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return _save(plt, fig, name)


def latency_percentiles(name: str, samples_us: Mapping[str, Sequence[float]], title: str) -> Path | None:
    """Latency at each of PERCENTILES, one line per series (log y axis)."""
    plt = _pyplot()
    if plt is None:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.2))
    xs = list(range(len(PERCENTILES)))
    for label, values in samples_us.items():
        ordered = sorted(values)
        ys = [ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))] for q in PERCENTILES]
        style = "--" if label.startswith("baseline") else "-"
        ax.plot(xs, ys, style, marker="o", label=label)
    ax.set_xticks(xs, [f"p{q:g}" for q in PERCENTILES])
    ax.set_yscale("log")
    ax.set_ylabel("microseconds")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(plt, fig, name)


def ttft_vs_length(name: str, lengths: Sequence[int], series: Mapping[str, Sequence[float]],
                   title: str) -> Path | None:
    """Seconds to first token against prompt length, one line per engine/case."""
    plt = _pyplot()
    if plt is None:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for label, values in series.items():
        ax.plot(lengths, values, marker="o", label=label)
    ax.set_xlabel("prompt tokens")
    ax.set_ylabel("TTFT (s)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return _save(plt, fig, name)
