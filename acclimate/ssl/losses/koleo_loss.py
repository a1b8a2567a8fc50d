"""KoLeo regulariser (Sablayrolles et al., "Spreading vectors for similarity search", ICLR 2019),
as used by DINOv2 (Oquab et al. 2023) on the class tokens of a batch."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class KoLeoLoss(nn.Module):
    """Kozachenko-Leonenko differential-entropy estimator: spreads features uniformly.

    ``L = -1/n sum_i log(min_{j != i} ||f_i - f_j|| + eps)`` on L2-normalised features, so each
    feature is pushed away from its nearest neighbour in the batch.

    Args:
        eps: added to distances before the log (DINOv2: 1e-8).
    """

    def __init__(self, eps: float = 1e-8) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, features: Tensor) -> Tensor:
        """features: (n, D), n >= 2 (one rank's batch of one view) -> scalar loss."""
        if features.shape[0] < 2:
            raise ValueError("KoLeo needs at least 2 features per batch")
        x = F.normalize(features.float(), p=2, dim=-1, eps=self.eps)
        with torch.no_grad():  # nearest neighbour by cosine similarity (= smallest distance)
            sim = x @ x.t()
            sim.fill_diagonal_(-2.0)
            nearest = sim.argmax(dim=1)
        dist = (x - x[nearest]).norm(dim=-1)
        return -torch.log(dist + self.eps).mean()
