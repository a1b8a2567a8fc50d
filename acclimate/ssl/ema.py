"""Exponential moving average of weights, for momentum teachers (DINO, BYOL, MoCo)."""

from __future__ import annotations

import math

import torch
from torch import nn


@torch.no_grad()
def update_ema(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """``t <- m * t + (1 - m) * s`` for every floating parameter and buffer (BN statistics too);
    integer buffers such as ``num_batches_tracked`` are copied."""
    t_state = teacher.state_dict()
    for name, s in student.state_dict().items():
        t = t_state[name]
        if t.dtype.is_floating_point:
            t.mul_(momentum).add_(s.detach().to(t.dtype), alpha=1.0 - momentum)
        else:
            t.copy_(s)


def cosine_momentum(step: int, total_steps: int, start: float, end: float = 1.0) -> float:
    """Cosine schedule from ``start`` to ``end`` over ``total_steps`` (DINO's teacher momentum)."""
    if total_steps <= 1:
        return end
    progress = min(max(step / (total_steps - 1), 0.0), 1.0)
    return end - (end - start) * (math.cos(math.pi * progress) + 1) / 2
