"""Cross-rank pieces that keep gradients: gather, all-reduce and a BatchNorm with global statistics.

Every piece reduces to the identity at world size 1 (or without ``torch.distributed``), so the
same method code runs on one CPU and on many GPUs. All of them are correct under DDP's gradient
*averaging*: rank ``r`` computes a loss ``L_r`` on its share of the batch; the backward pass of a
collective sums the gradients that every rank's loss sends to this rank's tensor, so after DDP
divides by the world size W each parameter receives ``d/dθ (1/W sum_r L_r)``, the gradient of the
single-process loss on the concatenated batch (when each ``L_r`` is a mean over equal shares).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn


def world_and_rank() -> tuple[int, int]:
    """(world size, this rank); (1, 0) when not running distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward returns this rank's slice of the gradient summed over ranks."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: Tensor) -> Tensor:
        world, rank = world_and_rank()
        ctx.rank, ctx.n = rank, x.shape[0]
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> Tensor:
        grad = grad.clone(memory_format=torch.contiguous_format)  # never modify autograd's
        dist.all_reduce(grad)  # every rank's loss sends gradient to every slice
        return grad[ctx.rank * ctx.n : (ctx.rank + 1) * ctx.n]


class _AllReduceWithGrad(torch.autograd.Function):
    """Sum over ranks; every rank's output depends on every input, so the backward sums too."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: Tensor) -> Tensor:
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


def gather_with_grad(x: Tensor) -> Tensor:
    """Concatenate ``x`` (B, ...) of every rank in rank order -> (W * B, ...), with gradients.

    Rows ``rank * B : (rank + 1) * B`` are this rank's own ``x``. Every rank must pass the same
    B (Lightning's DistributedSampler pads the data so that they do).
    """
    world, _ = world_and_rank()
    return x if world == 1 else _GatherWithGrad.apply(x)


def all_reduce_with_grad(x: Tensor) -> Tensor:
    """Sum of ``x`` over ranks, differentiable; ``x`` itself at world size 1."""
    world, _ = world_and_rank()
    return x if world == 1 else _AllReduceWithGrad.apply(x)


class SyncBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm1d whose training statistics are those of the global batch (every rank).

    Input (N, C). In training mode under ``torch.distributed`` the mean and (biased) variance are
    computed from sums all-reduced with gradients, so the output and its gradient equal those of
    one process on the concatenated batch; otherwise it is a plain ``BatchNorm1d``. Unlike
    ``torch.nn.SyncBatchNorm`` it also works on CPU with gloo. The contrastive papers normalise
    their projection heads over the global batch (SimCLR's global BN, MoCo v3's SyncBN, BYOL).
    """

    def forward(self, x: Tensor) -> Tensor:
        world, _ = world_and_rank()
        if not self.training or world == 1:
            return super().forward(x)
        self._check_input_dim(x)
        if x.dim() != 2:
            raise ValueError(f"SyncBatchNorm1d expects (N, C) input, got {tuple(x.shape)}")
        n_local = torch.tensor([float(x.shape[0])], device=x.device, dtype=torch.float32)
        stats = torch.cat([x.float().sum(0), (x.float() ** 2).sum(0), n_local])
        stats = all_reduce_with_grad(stats)
        c = x.shape[1]
        n = stats[-1]
        mean = stats[:c] / n
        var = (stats[c : 2 * c] / n - mean**2).clamp_min(0)
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = (
                    self.momentum
                    if self.momentum is not None
                    else 1.0 / float(self.num_batches_tracked)
                )
                unbiased = var * n / (n - 1).clamp_min(1)
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(unbiased.detach(), alpha=m)
        y = (x.float() - mean) * torch.rsqrt(var + self.eps)
        if self.affine:
            y = y * self.weight + self.bias
        return y.to(x.dtype)
