"""BYOL regression loss (Grill et al., "Bootstrap Your Own Latent", NeurIPS 2020, Eq. 2)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from acclimate.ssl.losses.ntxent_loss import fp32


class BYOLLoss(nn.Module):
    """``||p/|p| - z/|z| ||^2 = 2 - 2 cos(p, z)``, symmetrised over the two views and averaged over
    the batch: ``L = mean(2 - 2 cos(p1, z2)) + mean(2 - 2 cos(p2, z1))``.

    A mean over the batch per rank gives, under DDP's gradient averaging, exactly the
    single-process loss on the concatenated batch: nothing needs gathering.
    """

    def pair(self, p: Tensor, z: Tensor) -> Tensor:
        """p: (B, D) online prediction, z: (B, D) target projection -> scalar."""
        return (2 - 2 * F.cosine_similarity(fp32(p), fp32(z.detach()), dim=-1)).mean()

    def forward(self, p1: Tensor, p2: Tensor, z1: Tensor, z2: Tensor) -> Tensor:
        """p1, p2: predictions of views 1, 2; z1, z2: target projections of views 1, 2."""
        return self.pair(p1, z2) + self.pair(p2, z1)
