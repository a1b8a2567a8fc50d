"""Two levers for continuing from a pretrained backbone: a teacher that sees the views
upsampled, and an anchor to the frozen starting model.

A network pretrained at 224 px knows more than it shows on 64 px tiles: fed the same tiles
upsampled it scores several points higher. ``teacher_view`` upsamples the views for a teacher (EMA
or frozen), so that the student learns at native resolution what the teacher sees at the
resolution it was trained for. `StartAnchor` adds a feature-distillation term from the frozen
start (Mendieta et al., "Towards Geospatial Foundation Models via Continual Pretraining", ICCV
2023: masked modelling alone gained little; distillation from the frozen original model gave
the gain): targets from step one, and a pull against forgetting.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def upsample(x: Tensor, scale: float) -> Tensor:
    """x: (B, C, H, W) -> (B, C, round(H * scale), round(W * scale)), bilinear; x if scale is 1."""
    if scale == 1.0:
        return x
    size = (round(x.shape[-2] * scale), round(x.shape[-1] * scale))
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def check_levers(teacher_scale: float, anchor_weight: float) -> None:
    if not 1.0 <= teacher_scale <= 8.0:
        raise ValueError(f"teacher_scale must be in [1, 8], got {teacher_scale}")
    if anchor_weight < 0:
        raise ValueError(f"anchor_weight must be >= 0, got {anchor_weight}")


class StartAnchor(nn.Module):
    """A frozen copy of the starting backbone and the anchor loss
    ``mean(1 - cos(f_student(x), f_start(upsample(x, scale))))``.

    Zero at step 0 when ``scale`` is 1 (student and copy are the same network); it grows as the
    student drifts from what the start computes, and pulls it back.

    Args:
        backbone: the student backbone as it starts (copied here, never trained).
        scale: the start sees the views upsampled by this factor (``teacher_scale``).
    """

    def __init__(self, backbone: nn.Module, scale: float = 1.0) -> None:
        super().__init__()
        self.net = copy.deepcopy(backbone).requires_grad_(False)
        self.scale = scale

    def forward(self, images: Tensor, student_feats: Tensor) -> Tensor:
        """images: (N, C, H, W) the student's views; student_feats: (N, D) its pooled features
        of them (with gradient). Returns a scalar."""
        with torch.no_grad():
            self.net.eval()
            target = self.net(upsample(images, self.scale)).float()
        return (1 - F.cosine_similarity(student_feats.float(), target, dim=-1)).mean()
