"""Running centre of the teacher's outputs (DINO, Caron et al. 2021, Eq. 4)."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn


class Center(nn.Module):
    """EMA of the batch mean of teacher logits, averaged over every rank.

    ``c <- m * c + (1 - m) * mean_over_all_ranks(t)``. The state is a buffer, so it is saved in
    checkpoints and moves with the module.

    Args:
        dim: K, the output dimension of the head.
        momentum: m (paper: 0.9).
    """

    def __init__(self, dim: int, momentum: float = 0.9) -> None:
        super().__init__()
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"center_momentum must be in [0, 1), got {momentum}")
        self.momentum = momentum
        self.register_buffer("center", torch.zeros(1, dim))

    @torch.no_grad()
    def update(self, teacher_out: Tensor) -> None:
        """teacher_out: (N, K) logits of every global view of this rank's batch."""
        total = teacher_out.float().sum(dim=0, keepdim=True)
        count = torch.tensor([teacher_out.shape[0]], dtype=torch.float, device=total.device)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(total)
            dist.all_reduce(count)
        self.center.mul_(self.momentum).add_(total / count, alpha=1.0 - self.momentum)

    def forward(self) -> Tensor:
        return self.center
