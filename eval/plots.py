"""Reliability diagram and confidence histogram of one agent, as PNG files.

matplotlib is imported inside the functions, with the non-interactive Agg backend.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from core.files import write_atomically
from eval.metrics import DEFAULT_BINS, check_confidence_correct, nudge, reliability_bins


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def safe_name(agent: str) -> str:
    """A file-name-safe version of an agent name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", agent) or "agent"


def reliability_diagram(
    confidence: object,
    correct: object,
    path: str | Path,
    *,
    bins: int = DEFAULT_BINS,
    title: str = "",
    ece: float | None = None,
) -> Path:
    """Accuracy per equal-width confidence bin against the diagonal; bar width = bin width,
    the gap to the bin's mean confidence drawn in red. Returns the PNG path."""
    rel = reliability_bins(confidence, correct, bins=bins)
    plt = _pyplot()
    edges = np.asarray(rel.edges)
    width = edges[1] - edges[0]
    acc = np.nan_to_num(np.asarray(rel.accuracy))
    conf = np.asarray(rel.mean_confidence)
    filled = np.asarray(rel.counts) > 0
    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=100)
    ax.bar(
        edges[:-1],
        acc,
        width=width,
        align="edge",
        color="#4c72b0",
        edgecolor="black",
        label="accuracy",
    )
    ax.bar(
        edges[:-1][filled],
        (conf - acc)[filled],
        bottom=acc[filled],
        width=width,
        align="edge",
        color="#dd5555",
        alpha=0.45,
        edgecolor="#aa0000",
        label="gap to confidence",
    )
    ax.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    suffix = f" (ECE {ece:.3f}, {bins} bins)" if ece is not None else f" ({bins} bins)"
    ax.set_title((title or "reliability") + suffix, fontsize=10)
    ax.legend(loc="upper left", fontsize=8)
    return _save(fig, plt, path)


def confidence_histogram(
    confidence: object,
    correct: object,
    path: str | Path,
    *,
    bins: int = DEFAULT_BINS,
    title: str = "",
) -> Path:
    """Stacked histogram of confidences of right and wrong predictions. Returns the PNG path."""
    conf, corr = check_confidence_correct(confidence, correct)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 3.5), dpi=100)
    edges = np.linspace(0.0, 1.0, bins + 1)
    ax.hist(
        [nudge(conf[corr == 1.0]), nudge(conf[corr == 0.0])],
        bins=edges,
        stacked=True,
        color=["#55a868", "#c44e52"],
        label=["correct", "wrong"],
        edgecolor="black",
    )
    ax.set_xlim(0, 1)
    ax.set_xlabel("confidence")
    ax.set_ylabel("predictions")
    ax.set_title(title or "confidence", fontsize=10)
    ax.legend(loc="upper left", fontsize=8)
    return _save(fig, plt, path)


def _save(fig, plt, path: str | Path) -> Path:
    fig.tight_layout()
    try:
        return write_atomically(path, lambda tmp: fig.savefig(tmp, format="png"), what="a plot")
    finally:
        plt.close(fig)


def agent_plots(
    agent: str,
    confidence: object,
    correct: object,
    folder: str | Path,
    *,
    bins: int = DEFAULT_BINS,
    ece: float | None = None,
) -> list[Path]:
    """``<agent>_reliability.png`` and ``<agent>_confidence.png`` in ``folder``."""
    name = safe_name(agent)
    out = Path(folder)
    return [
        reliability_diagram(
            confidence, correct, out / f"{name}_reliability.png", bins=bins, title=agent, ece=ece
        ),
        confidence_histogram(
            confidence, correct, out / f"{name}_confidence.png", bins=bins, title=agent
        ),
    ]
