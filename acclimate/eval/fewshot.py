"""Few-shot linear probes: n labelled images per class, several random draws (seeds), scored on
the full test split; mean and standard deviation over the draws."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from acclimate.eval.linear import train_linear_probe


def sample_shots(labels: Tensor, shots: int, seed: int) -> Tensor:
    """Indices of ``shots`` random items per class (all of a class with fewer), sorted."""
    rng = np.random.default_rng(seed)
    y = labels.numpy()
    picked = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        picked.extend(rng.choice(idx, size=min(shots, len(idx)), replace=False).tolist())
    return torch.tensor(sorted(picked), dtype=torch.long)


def fewshot_probe(
    train: tuple[Tensor, Tensor],
    test: tuple[Tensor, Tensor],
    n_classes: int,
    shots: Sequence[int] = (1, 5, 10),
    seeds: Sequence[int] = (0, 1, 2),
    weight_decay: float = 1e-3,
) -> dict[str, dict[str, object]]:
    """train, test: (features (N, D), labels (N,)).

    Returns ``{str(shots): {"mean": ..., "std": ..., "runs": [top-1 per seed]}}``; std is the
    population standard deviation over seeds (0 for a single seed).
    """
    (xtr, ytr), (xte, yte) = train, test
    out: dict[str, dict[str, object]] = {}
    for n in shots:
        runs = []
        for seed in seeds:
            idx = sample_shots(ytr, n, seed)
            probe = train_linear_probe(xtr[idx], ytr[idx], n_classes, weight_decay)
            runs.append(probe.accuracy(xte, yte))
        acc = torch.tensor(runs, dtype=torch.float64)
        out[str(n)] = {
            "mean": float(acc.mean()),
            "std": float(acc.std(unbiased=False)),
            "runs": runs,
        }
    return out
