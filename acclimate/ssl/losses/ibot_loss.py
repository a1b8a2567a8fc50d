"""iBOT masked-patch self-distillation loss (Zhou et al., "iBOT: Image BERT Pre-Training with
Online Tokenizer", ICLR 2022, Eq. 2), normalised as in DINOv2 (Oquab et al. 2023)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class IBOTLoss(nn.Module):
    """Cross-entropy between teacher and student distributions of the masked patch tokens.

    ``L = -1/B sum_b 1/|M_b| sum_{i in M_b} sum_k p_t(u_bi)_k log softmax(s_bi / tau_s)_k``:
    each image's masked patches are averaged, then the images (also the unmasked ones, which
    contribute 0) are averaged. The teacher sees the unmasked crop; its distribution ``p_t``
    is centred and sharpened by the caller (centring or Sinkhorn-Knopp).

    Args:
        student_temp: tau_s, the student temperature (paper: 0.1).
    """

    def __init__(self, student_temp: float = 0.1) -> None:
        super().__init__()
        if student_temp <= 0:
            raise ValueError(f"student_temp must be positive, got {student_temp}")
        self.student_temp = student_temp

    def forward(self, student_logits: Tensor, teacher_probs: Tensor, masks: Tensor) -> Tensor:
        """
        Args:
            student_logits: (M, K) head outputs of the student's masked patch tokens, in the
                order of ``masks.nonzero()`` (image by image, row-major patches).
            teacher_probs: (M, K) teacher distributions at the same patches (no gradient).
            masks: (B, N) bool, True = masked; M = ``masks.sum()``.

        Returns:
            scalar loss.
        """
        per_patch = -(
            teacher_probs.detach() * F.log_softmax(student_logits / self.student_temp, -1)
        )
        per_patch = per_patch.sum(dim=-1)  # (M,)
        n_per_image = masks.sum(dim=1, keepdim=True).clamp(min=1).to(per_patch.dtype)
        weights = (1.0 / n_per_image).expand_as(masks)[masks]  # (M,)
        return (per_patch * weights).sum() / masks.shape[0]
