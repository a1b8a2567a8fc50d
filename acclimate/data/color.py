"""Colour arithmetic on batches of RGB images ``(..., 3, H, W)`` in [0, 1], with per-sample
factors that broadcast (e.g. ``(B, 1, 1, 1)``): the formulas of torchvision's colour ops."""

from __future__ import annotations

import torch
from torch import Tensor

LUMA = (0.2989, 0.587, 0.114)  # ITU-R 601-2, as torchvision's rgb_to_grayscale


def grayscale(x: Tensor) -> Tensor:
    """(..., 3, H, W) -> (..., 1, H, W) luma."""
    r, g, b = x.unbind(dim=-3)
    return (LUMA[0] * r + LUMA[1] * g + LUMA[2] * b).unsqueeze(-3)


def blend(x: Tensor, other: Tensor, f: Tensor) -> Tensor:
    """``f * x + (1 - f) * other``, clamped to [0, 1]."""
    return (f * x + (1 - f) * other).clamp(0, 1)


def shift_hue(x: Tensor, f: Tensor) -> Tensor:
    """Rotate the hue by ``f`` (a fraction of the circle, in [-0.5, 0.5]) and keep value and
    saturation: torchvision's ``adjust_hue`` (RGB -> HSV -> RGB) in one pass. Channel n of the
    result is ``max - chroma * clamp(min(k, 4 - k), 0, 1)`` with ``k = (n' + 6 h) mod 6`` for
    n' = 5, 3, 1 (red, green, blue). x: (..., 3, H, W); f broadcasts to (..., 1, H, W)."""
    x = x.clamp(0, 1)
    r, g, b = x.unbind(dim=-3)
    # elementwise max/min of the three planes: a third faster than a reduction over the
    # channel dimension (aminmax), which dominated this op
    high = torch.maximum(torch.maximum(r, g), b)
    low = torch.minimum(torch.minimum(r, g), b)
    chroma = high - low
    inv = chroma.clamp_min(1e-30).reciprocal_()  # gray pixels (chroma 0): any finite hue
    h6 = torch.where(  # hue in sixths of the circle
        high == r,
        (g - b).mul_(inv),
        torch.where(high == g, (b - r).mul_(inv).add_(2), (r - g).mul_(inv).add_(4)),
    )
    h6 = h6 + 6 * f.squeeze(-3)
    n = torch.tensor([5.0, 3.0, 1.0], device=x.device, dtype=x.dtype).reshape(3, 1, 1)
    k = (h6.unsqueeze(-3) + n).remainder_(6)
    k = torch.minimum(k, 4 - k).clamp_(0, 1)
    return high.unsqueeze(-3) - chroma.unsqueeze(-3) * k
