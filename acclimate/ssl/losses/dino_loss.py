"""DINO self-distillation loss (Caron et al., "Emerging Properties in Self-Supervised Vision
Transformers", ICCV 2021, Algorithm 1)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class DINOLoss(nn.Module):
    """Cross-entropy between the sharpened, centred teacher and the student, over view pairs.

    ``H(t, s) = -sum_k softmax((t - c) / tau_t)_k * log_softmax(s / tau_s)_k``, averaged over the
    batch and over every (teacher view, student view) pair whose views differ.

    Args:
        student_temp: tau_s, the student temperature (paper: 0.1).
    """

    def __init__(self, student_temp: float = 0.1) -> None:
        super().__init__()
        if student_temp <= 0:
            raise ValueError(f"student_temp must be positive, got {student_temp}")
        self.student_temp = student_temp

    def forward(
        self,
        student_out: list[Tensor],
        teacher_out: list[Tensor],
        center: Tensor,
        teacher_temp: float,
    ) -> Tensor:
        """
        Args:
            student_out: one (B, K) logit tensor per student view; the first ``len(teacher_out)``
                are the global views, in the same order as the teacher's.
            teacher_out: one (B, K) logit tensor per global view (no gradient needed).
            center: (1, K) running centre of the teacher logits.
            teacher_temp: tau_t (paper: 0.04, warmed up from 0.04 to 0.07).

        Returns:
            scalar loss.
        """
        teacher_probs = [
            F.softmax((t - center) / teacher_temp, dim=-1).detach() for t in teacher_out
        ]
        student_logp = [F.log_softmax(s / self.student_temp, dim=-1) for s in student_out]
        total = student_out[0].new_zeros(())
        n_pairs = 0
        for it, t in enumerate(teacher_probs):
            for iv, logp in enumerate(student_logp):
                if iv == it:
                    continue
                total = total + torch.sum(-t * logp, dim=-1).mean()
                n_pairs += 1
        if n_pairs == 0:
            raise ValueError("DINO needs at least two views (2 global crops, or 1 global + locals)")
        return total / n_pairs
