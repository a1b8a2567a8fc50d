"""Sinkhorn-Knopp centring of teacher outputs (Caron et al. 2020, SwAV; used by DINOv2,
Oquab et al. 2023, Sec. 4), correct for any world size."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def _all_reduce(x: Tensor, op: dist.ReduceOp = dist.ReduceOp.SUM) -> Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(x, op=op)
    return x


@torch.no_grad()
def sinkhorn_knopp(logits: Tensor, temp: float, n_iters: int = 3) -> Tensor:
    """Teacher assignments with equal mass on every prototype across the global batch.

    Alternately normalises the prototype marginals (rows, summed over all ranks) to 1/K and the
    sample marginals (columns) to 1/B_total, starting from ``exp(logits / temp)``. Replaces
    DINO's running centre: no state, no momentum.

    Args:
        logits: (B, K) teacher logits of this rank (B may differ between ranks).
        temp: teacher temperature.
        n_iters: normalisation rounds (paper: 3).

    Returns:
        (B, K) probabilities; each row sums to 1.
    """
    x = logits.float() / temp
    peak = _all_reduce(x.max().reshape(1), dist.ReduceOp.MAX)
    q = torch.exp(x - peak).t()  # (K, B); shifting by a constant cancels out in the normalising
    k, tiny = q.shape[0], torch.finfo(q.dtype).tiny
    b_total = _all_reduce(torch.tensor([float(q.shape[1])], device=q.device))
    q /= _all_reduce(q.sum().reshape(1))
    for _ in range(n_iters):
        q /= _all_reduce(q.sum(dim=1, keepdim=True)).clamp(min=tiny)  # each prototype: 1/K
        q /= k
        q /= q.sum(dim=0, keepdim=True).clamp(min=tiny)  # each sample: 1/B
        q /= b_total
    return (q * b_total).t()
