"""Exponential moving average of weights, for momentum teachers (DINO, BYOL, MoCo)."""

from __future__ import annotations

import math

import torch
from torch import nn


@torch.no_grad()
def update_ema(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """``t <- m * t + (1 - m) * s`` for the student's trainable parameters and floating buffers
    (BN statistics), matched by name; integer buffers such as ``num_batches_tracked`` are copied.

    Parameters the student does not train (frozen base weights under an adapter) are left
    untouched, so they stay bit-identical to the student's. The update is ``torch.lerp`` (fused
    over all tensors with ``torch._foreach_lerp_``), which is exact where ``t == s`` (no fp32
    drift of weights that have not moved).
    """
    weight = 1.0 - momentum
    t_params = dict(teacher.named_parameters())
    pairs = [
        (t_params[name], s.detach()) for name, s in student.named_parameters() if s.requires_grad
    ]
    t_buffers = dict(teacher.named_buffers())
    for name, s in student.named_buffers():
        t = t_buffers[name]
        if t.dtype.is_floating_point:
            pairs.append((t, s))
        else:
            t.copy_(s)
    # one fused call per (device, dtype) group instead of a Python loop of lerp_ (same values)
    groups: dict[tuple, tuple[list, list]] = {}
    for t, s in pairs:
        ts, ss = groups.setdefault((t.device, t.dtype), ([], []))
        ts.append(t)
        ss.append(s.to(t.dtype))
    for ts, ss in groups.values():
        torch._foreach_lerp_(ts, ss, weight)


def cosine_momentum(step: int, total_steps: int, start: float, end: float = 1.0) -> float:
    """Cosine schedule from ``start`` to ``end`` over ``total_steps`` (DINO's teacher momentum)."""
    if total_steps <= 1:
        return end
    progress = min(max(step / (total_steps - 1), 0.0), 1.0)
    return end - (end - start) * (math.cos(math.pi * progress) + 1) / 2
