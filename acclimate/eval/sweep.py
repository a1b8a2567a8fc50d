"""Choosing the linear probe's weight decay on a validation split carved from the train split,
so the test split is only used once, to report the chosen probe."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from acclimate.eval.linear import LinearProbe, train_linear_probe


def stratified_split(labels: Tensor, fraction: float, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Indices (fit, val): about ``fraction`` of each class goes to val (at least one item of
    every class with two or more items, none of a class with one)."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    y = labels.numpy()
    fit, val = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        n_val = 0 if len(idx) < 2 else min(len(idx) - 1, max(1, round(fraction * len(idx))))
        val.extend(idx[:n_val].tolist())
        fit.extend(idx[n_val:].tolist())
    return torch.tensor(sorted(fit), dtype=torch.long), torch.tensor(sorted(val), dtype=torch.long)


def sweep_linear_probe(
    feats: Tensor,
    labels: Tensor,
    n_classes: int,
    weight_decays: Sequence[float] = (1e-4, 1e-3, 1e-2, 1e-1),
    val_fraction: float = 0.2,
    seed: int = 0,
    prefer: float = 1e-3,
    classes: list[str] | None = None,
) -> tuple[LinearProbe, dict[str, object]]:
    """Fit one probe per weight decay on the fit part, score it on the val part, refit the best
    on all of ``feats`` (N, D) / ``labels`` (N,).

    Ties go to the weight decay closest to ``prefer`` (log scale). Returns the refitted probe and
    ``{"weight_decay": best, "val_top1": {wd: accuracy}, "n_val": ...}``.
    """
    if not weight_decays:
        raise ValueError("weight_decays is empty")
    fit, val = stratified_split(labels, val_fraction, seed)
    scores: dict[float, float] = {}
    for wd in weight_decays:
        if len(val) == 0:
            scores[wd] = float("nan")
            continue
        probe = train_linear_probe(feats[fit], labels[fit], n_classes, wd)
        scores[wd] = probe.accuracy(feats[val], labels[val])

    def rank(wd: float) -> tuple[float, float]:
        s = scores[wd]
        return (-1.0 if math.isnan(s) else s, -abs(math.log10(wd) - math.log10(prefer)))

    best = max(weight_decays, key=rank)
    probe = train_linear_probe(feats, labels, n_classes, best, classes=classes)
    info = {
        "weight_decay": best,
        "val_top1": {f"{wd:g}": s for wd, s in scores.items()},
        "n_val": len(val),
    }
    return probe, info
