"""MoCo v3 contrastive loss (Chen, Xie, He, "An Empirical Study of Training Self-Supervised Vision
Transformers", ICCV 2021, Algorithm 1), keys from every rank."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from acclimate.ssl.distributed import gather_with_grad, world_and_rank
from acclimate.ssl.losses.ntxent_loss import fp32, info_nce


class MoCoV3Loss(nn.Module):
    """``ctr(q, k) = 2 tau * CE(q k^T / tau, positives)``, symmetrised:
    ``L = ctr(q1, k2) + ctr(q2, k1)``.

    The keys come from the momentum encoder (no gradient); under DDP they are gathered from every
    rank, so the negatives are the whole global batch (the paper's ``concat_all_gather``). The
    ``2 tau`` factor makes the gradient scale independent of tau, as in the paper's code.

    Args:
        temperature: tau (paper: 0.2 for ViT, 1.0 for ResNet).
    """

    def __init__(self, temperature: float = 0.2) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.temperature = temperature

    def ctr(self, q: Tensor, k: Tensor) -> Tensor:
        """q: (B, D) queries (predictor output), k: (B, D) keys of the other view -> scalar."""
        q, k = F.normalize(fp32(q), dim=1), F.normalize(fp32(k.detach()), dim=1)
        _, rank = world_and_rank()
        b = q.shape[0]
        positives = torch.arange(b, device=q.device) + rank * b
        loss = info_nce(q, gather_with_grad(k), positives, self.temperature, exclude=None)
        return 2 * self.temperature * loss

    def forward(self, q1: Tensor, q2: Tensor, k1: Tensor, k2: Tensor) -> Tensor:
        """q1, q2: (B, D) queries of views 1, 2; k1, k2: (B, D) momentum keys -> scalar loss."""
        return self.ctr(q1, k2) + self.ctr(q2, k1)
