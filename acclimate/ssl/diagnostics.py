"""Collapse diagnostics: cheap statistics of a batch of embeddings or teacher distributions.

A collapsed self-supervised model maps every image to (nearly) one point: the spread of its
embeddings across the batch and their effective rank fall towards 0 and 1. A DINO teacher
collapses either to one prototype (its batch-mean distribution has entropy near 0) or to the
uniform distribution (every image's entropy near log K).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


@torch.no_grad()
def embedding_spread(z: Tensor) -> Tensor:
    """Mean per-dimension std across the batch of L2-normalised embeddings, times sqrt(D).

    z: (B, D). About 1 for embeddings spread evenly over the sphere, 0 when every row is the
    same (collapse). A scalar tensor.
    """
    z = F.normalize(z.detach().float().flatten(1), dim=1)
    return z.std(dim=0).mean() * math.sqrt(z.shape[1])


@torch.no_grad()
def rankme(z: Tensor, eps: float = 1e-7) -> Tensor:
    """RankMe effective rank (Garrido et al., "RankMe: Assessing the Downstream Performance of
    Pretrained Self-Supervised Representations by Their Rank", ICML 2023):
    ``exp(H(p))`` with ``p_k = sigma_k / sum(sigma) + eps`` over the singular values of z.

    z: (B, D) -> scalar in [1, min(B, D)].
    """
    s = torch.linalg.svdvals(z.detach().float().flatten(1))
    p = s / s.sum().clamp(min=eps) + eps
    return torch.exp(-(p * p.log()).sum())


@torch.no_grad()
def teacher_student_stats(
    teacher_probs: Tensor, student_logits: Tensor, student_temp: float
) -> dict[str, Tensor]:
    """DINO-family diagnostics for matching views.

    teacher_probs: (B, K) centred, sharpened teacher distributions; student_logits: (B, K)
    student logits of the same images and views. Returns ``teacher_entropy`` (mean per-image
    entropy, in nats; near log K: uniform collapse), ``teacher_batch_entropy`` (entropy of the
    batch-mean distribution; near 0: one-prototype collapse) and ``kl`` (mean KL(teacher ||
    student)).
    """
    t = teacher_probs.float().clamp(min=1e-12)
    log_s = F.log_softmax(student_logits.float() / student_temp, dim=-1)
    entropy = -(t * t.log()).sum(-1)
    mean = t.mean(0)
    return {
        "teacher_entropy": entropy.mean(),
        "teacher_batch_entropy": -(mean * mean.log()).sum(),
        "kl": ((t * t.log()).sum(-1) - (t * log_s).sum(-1)).mean(),
    }
