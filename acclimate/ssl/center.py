"""Running centre of the teacher's outputs (DINO, Caron et al. 2021, Eq. 4)."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn


class Center(nn.Module):
    """EMA of the batch mean of teacher logits, averaged over every rank.

    ``c <- m * c + (1 - m) * mean_over_all_ranks(t)``, once per optimiser step (`accumulate`
    each micro-batch, `step` after the optimiser). The state is a buffer, so it is saved in
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
        self._pending: list | None = None  # [sum (1, K), count] since the last optimiser step

    @torch.no_grad()
    def accumulate(self, teacher_out: Tensor) -> None:
        """Add a micro-batch's teacher logits (N, K) to the pending update (see `step`)."""
        total = teacher_out.detach().float().sum(dim=0, keepdim=True)
        if self._pending is None:
            self._pending = [total, teacher_out.shape[0]]
        else:
            self._pending[0] = self._pending[0] + total
            self._pending[1] += teacher_out.shape[0]

    @torch.no_grad()
    def step(self) -> None:
        """Apply the pending update once per optimiser step: the mean over every micro-batch
        since the last step and over every rank, so gradient accumulation keeps the momentum
        per (effective) batch of the paper instead of raising it to m^A."""
        if self._pending is None:
            return
        total, n = self._pending
        self._pending = None
        count = torch.tensor([float(n)], device=total.device)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(total)
            dist.all_reduce(count)
        if count.item() > 0:
            self.center.mul_(self.momentum).add_(total / count, alpha=1.0 - self.momentum)

    def update(self, teacher_out: Tensor) -> None:
        """teacher_out: (N, K) logits of every global view of this rank's batch: `accumulate`
        then `step` (one micro-batch per step)."""
        self.accumulate(teacher_out)
        self.step()

    def forward(self) -> Tensor:
        return self.center
