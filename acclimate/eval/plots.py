"""PNG figures of an evaluation report (matplotlib, headless): accuracy per model, few-shot
curves, confusion matrices, 2D maps of embeddings. Needs ``pip install acclimate[report]``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    _pyplot().close(fig)
    return path


def accuracy_bars(scores: Mapping[str, Mapping[str, float]], path: str | Path) -> Path:
    """Grouped bars: ``scores[model][metric]`` in [0, 1]."""
    plt = _pyplot()
    models = list(scores)
    metrics = list(next(iter(scores.values())))
    width = 0.8 / max(len(models), 1)
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(metrics)), 3.6))
    x = np.arange(len(metrics))
    for i, m in enumerate(models):
        ax.bar(x + i * width, [scores[m].get(k, np.nan) for k in metrics], width, label=m)
    ax.set_xticks(x + width * (len(models) - 1) / 2, metrics, fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("score")
    ax.legend(fontsize=7)
    ax.set_title("frozen-feature accuracy per model")
    return _save(fig, Path(path))


def fewshot_curves(curves: Mapping[str, Mapping[str, Mapping[str, Any]]], path: str | Path) -> Path:
    """``curves[model][shots] = {"mean": ..., "std": ...}``: mean top-1 with a +-std band."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for model, by_shot in curves.items():
        shots = sorted(by_shot, key=int)
        x = np.array([int(s) for s in shots])
        mean = np.array([by_shot[s]["mean"] for s in shots])
        std = np.array([by_shot[s]["std"] for s in shots])
        ax.plot(x, mean, marker="o", label=model)
        ax.fill_between(x, mean - std, mean + std, alpha=0.2)
    ax.set_xscale("log")
    ax.set_xticks(x, [str(v) for v in x])
    ax.set_xlabel("labelled images per class")
    ax.set_ylabel("linear probe top-1")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    ax.set_title("few-shot linear probe")
    return _save(fig, Path(path))


def confusion_plot(
    cm: Sequence[Sequence[int]], classes: Sequence[str], title: str, path: str | Path
) -> Path:
    """Row-normalised confusion matrix (rows: true class) with the counts written in cells."""
    plt = _pyplot()
    counts = np.asarray(cm, dtype=np.float64)
    rates = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    n = len(counts)
    side = min(12, 2 + 0.45 * n)
    fig, ax = plt.subplots(figsize=(side, side))
    ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    if n <= 30:
        for i in range(n):
            for j in range(n):
                colour = "white" if rates[i, j] > 0.5 else "black"
                ax.text(j, i, int(counts[i, j]), ha="center", va="center", fontsize=7, color=colour)
        ax.set_xticks(range(n), classes, rotation=90, fontsize=7)
        ax.set_yticks(range(n), classes, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    return _save(fig, Path(path))


def embedding_map(
    points: np.ndarray, labels: np.ndarray, classes: Sequence[str], title: str, path: str | Path
) -> Path:
    """Scatter of 2D points (N, 2) coloured by class label (N,)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 4.4))
    cmap = plt.get_cmap("tab20" if len(classes) > 10 else "tab10")
    for c, name in enumerate(classes):
        sel = labels == c
        if sel.any():
            ax.scatter(*points[sel].T, s=8, color=cmap(c % cmap.N), label=name)
    if len(classes) <= 20:
        ax.legend(fontsize=6, markerscale=2, loc="best")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=9)
    return _save(fig, Path(path))
