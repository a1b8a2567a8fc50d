"""NT-Xent, the normalised temperature-scaled cross-entropy of SimCLR (Chen et al., "A Simple
Framework for Contrastive Learning of Visual Representations", ICML 2020, Algorithm 1), with
negatives from every rank."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from acclimate.ssl.distributed import gather_with_grad, world_and_rank


def fp32(x: Tensor) -> Tensor:
    """At least float32 (bf16/fp16 activations from mixed precision are promoted; fp64 kept)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def info_nce(
    queries: Tensor, keys: Tensor, positives: Tensor, temperature: float, exclude: Tensor | None
) -> Tensor:
    """Mean over queries of ``-log softmax(q . k / tau)[positive]``.

    Args:
        queries: (N, D) L2-normalised.
        keys: (M, D) L2-normalised.
        positives: (N,) index of each query's positive key.
        temperature: tau.
        exclude: (N,) index of a key to leave out of each query's softmax (itself), or None.
    """
    logits = queries @ keys.T / temperature
    if exclude is not None:
        logits = logits.scatter(1, exclude[:, None], float("-inf"))
    return F.cross_entropy(logits, positives)


class NTXentLoss(nn.Module):
    """``l(i, j) = -log exp(sim(z_i, z_j) / tau) / sum_{k != i} exp(sim(z_i, z_k) / tau)``,
    averaged over both views of every image (SimCLR Alg. 1: ``L = 1/2N sum_k l(2k-1, 2k) +
    l(2k, 2k-1)``), ``sim`` the cosine similarity.

    Under DDP the other ranks' embeddings are gathered with gradients, so every image of the global
    batch is a negative and the loss equals the single-process loss on the concatenated batch.

    Args:
        temperature: tau (paper: 0.1 with batches of 4096; 0.2-0.5 suits batches under 256).
    """

    def __init__(self, temperature: float = 0.1) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.temperature = temperature

    def forward(self, z1: Tensor, z2: Tensor) -> Tensor:
        """z1, z2: (B, D) projections of two views of the same B images -> scalar loss."""
        z1, z2 = F.normalize(fp32(z1), dim=1), F.normalize(fp32(z2), dim=1)
        b = z1.shape[0]
        world, rank = world_and_rank()
        keys = torch.cat([gather_with_grad(z1), gather_with_grad(z2)])  # (2 W B, D)
        own = torch.arange(b, device=z1.device) + rank * b  # rows of this rank in each view block
        total = world * b
        queries = torch.cat([z1, z2])
        self_index = torch.cat([own, own + total])
        positives = torch.cat([own + total, own])
        return info_nce(queries, keys, positives, self.temperature, exclude=self_index)
