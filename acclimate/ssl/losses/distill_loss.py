"""Embedding distillation loss: a student's embeddings regressed onto a frozen teacher's."""

from __future__ import annotations

from typing import Literal

import torch.nn.functional as F
from torch import Tensor, nn

from acclimate.ssl.losses.ntxent_loss import fp32


class EmbeddingDistillLoss(nn.Module):
    """Distance between L2-normalised student and teacher embeddings, averaged over the batch.

    ``cosine``: ``1 - cos(s, t)``. ``smooth_l1``: ``sum_d smoothL1_beta(s_d / |s| - t_d / |t|)``
    (summed over dimensions so that its size does not shrink with D).

    Args:
        kind: ``cosine`` (direction only; the usual choice) or ``smooth_l1`` (less sensitive to a
            few badly matched images).
        beta: smooth-L1 threshold between the quadratic and linear parts (on unit vectors).
    """

    def __init__(self, kind: Literal["cosine", "smooth_l1"] = "cosine", beta: float = 0.1) -> None:
        super().__init__()
        if kind not in ("cosine", "smooth_l1"):
            raise ValueError(f"distillation loss must be 'cosine' or 'smooth_l1', got {kind!r}")
        if beta <= 0:
            raise ValueError(f"beta must be positive, got {beta}")
        self.kind, self.beta = kind, beta

    def forward(self, student: Tensor, teacher: Tensor) -> Tensor:
        """student: (B, D) projected student embeddings; teacher: (B, D) -> scalar loss."""
        s = F.normalize(fp32(student), dim=-1)
        t = F.normalize(fp32(teacher.detach()), dim=-1)
        if self.kind == "cosine":
            return (1 - (s * t).sum(-1)).mean()
        return F.smooth_l1_loss(s, t, beta=self.beta, reduction="none").sum(-1).mean()
