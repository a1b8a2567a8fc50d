"""Weighted k-nearest-neighbour classification on frozen features (Wu et al. 2018, as used in
DINO's ``eval_knn.py``: cosine similarity, votes weighted by exp(sim / T))."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


@torch.no_grad()
def knn_predict(
    train_feats: Tensor,
    train_labels: Tensor,
    test_feats: Tensor,
    n_classes: int,
    k: int = 20,
    temperature: float = 0.07,
    chunk: int = 1024,
) -> Tensor:
    """Class scores of each test feature.

    Args:
        train_feats: (N, D) bank features; train_labels: (N,) in [0, n_classes).
        test_feats: (M, D) query features.
    Returns:
        (M, n_classes) summed vote weights.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    bank = F.normalize(train_feats.float(), dim=1)
    k = min(k, bank.shape[0])
    scores = []
    for start in range(0, test_feats.shape[0], chunk):
        q = F.normalize(test_feats[start : start + chunk].float(), dim=1)
        sim, idx = (q @ bank.T).topk(k, dim=1)
        weights = (sim / temperature).exp()
        votes = torch.zeros(q.shape[0], n_classes, dtype=weights.dtype, device=q.device)
        votes.scatter_add_(1, train_labels.to(q.device)[idx], weights)
        scores.append(votes)
    return torch.cat(scores)


def knn_accuracy(
    train_feats: Tensor,
    train_labels: Tensor,
    test_feats: Tensor,
    test_labels: Tensor,
    k: int = 20,
    temperature: float = 0.07,
) -> float:
    """Top-1 accuracy of the weighted kNN classifier."""
    n_classes = int(max(train_labels.max(), test_labels.max()).item()) + 1
    pred = knn_predict(train_feats, train_labels, test_feats, n_classes, k, temperature).argmax(1)
    return float((pred == test_labels).float().mean().item())
