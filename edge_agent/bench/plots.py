"""PNG plots of benchmark results (matplotlib, Agg backend: no display needed).

- latency histogram + CDF of the model-only queries, one series per model;
- per-frame end-to-end latency over a pipeline run;
- per-stage time per frame (decode, queue, preprocess, infer, postprocess) as stacked bars.

Inputs are plain mappings ``label → numbers``; this module knows nothing of
how they were measured. matplotlib is imported lazily, so a vehicle without
it can still run the agent.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["plot_latency", "plot_timeline", "plot_stages"]


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_latency(samples_ms: Mapping[str, Sequence[float]], path: Path, *, title: str = "Model latency") -> Path:
    """Histogram (left, fraction of each model's queries) and empirical CDF with p50/p99 marks (right).

    When the models differ by more than 20x the latency axis is logarithmic,
    so a fast and a slow model stay readable in one picture.
    """
    plt = _pyplot()
    import numpy as np

    series = {k: np.sort(np.asarray(v, dtype=np.float64)) for k, v in samples_ms.items() if len(v)}
    fig, (ax_h, ax_c) = plt.subplots(1, 2, figsize=(11, 4))
    if series:
        lo = max(min(float(v[0]) for v in series.values()), 1e-3)
        hi = max(max(float(v[-1]) for v in series.values()), lo * 1.01)
        log_x = hi / lo > 20
        bins = np.geomspace(lo, hi, 60) if log_x else np.linspace(lo, hi, 60)
        for label, xs in series.items():
            n = xs.size
            line = ax_c.plot(xs, np.arange(1, n + 1) / n, label=label)[0]
            ax_h.hist(
                np.clip(xs, lo, hi),
                bins=bins,
                weights=np.full(n, 1.0 / n),
                alpha=0.55,
                label=label,
                color=line.get_color(),
            )
            for q, style in ((0.5, ":"), (0.99, "--")):
                ax_c.axvline(
                    float(np.percentile(xs, q * 100)),
                    linestyle=style,
                    linewidth=0.9,
                    color=line.get_color(),
                )
        if log_x:
            ax_h.set_xscale("log")
            ax_c.set_xscale("log")
    ax_h.set(xlabel="latency (ms)", ylabel="fraction of queries", title=f"{title}: histogram")
    ax_c.set(xlabel="latency (ms)", ylabel="fraction of queries", title="CDF (dotted p50, dashed p99)")
    ax_c.set_ylim(0, 1.01)
    for ax in (ax_h, ax_c):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, plt, path)


def plot_timeline(
    latency_ms: Mapping[str, Sequence[float]],
    path: Path,
    *,
    title: str = "Pipeline latency per frame",
) -> Path:
    """End-to-end latency (capture → result) of every frame, in frame order."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(11, 4))
    for label, values in latency_ms.items():
        ax.plot(range(len(values)), list(values), linewidth=0.8, label=label)
    positive = [float(v) for values in latency_ms.values() for v in values if v > 0]
    if positive and max(positive) / min(positive) > 50:  # very different models: keep both readable
        ax.set_yscale("log")
    ax.set(xlabel="frame", ylabel="capture → result (ms)", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, plt, path)


def plot_stages(
    stages_ms: Mapping[str, Mapping[str, float]],
    path: Path,
    *,
    title: str = "Time per frame by stage",
) -> Path:
    """One stacked bar per model: mean ms per frame in each stage."""
    plt = _pyplot()
    labels = list(stages_ms)
    stage_names: list[str] = []
    for stages in stages_ms.values():
        stage_names += [s for s in stages if s not in stage_names]
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(labels) + 3), 4.5))
    bottoms = [0.0] * len(labels)
    for stage in stage_names:
        heights = [float(stages_ms[label].get(stage, 0.0)) for label in labels]
        ax.bar(labels, heights, bottom=bottoms, label=stage)
        bottoms = [b + h for b, h in zip(bottoms, heights, strict=True)]
    ax.set(ylabel="ms per frame", title=title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    plt.setp(ax.get_xticklabels(), rotation=15, ha="right")
    return _save(fig, plt, path)


def _save(fig: Any, plt: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
