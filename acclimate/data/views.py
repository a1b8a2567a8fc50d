"""The per-sample part of a view when the photometric ops run per batch (``augment.device``
``cpu`` or ``auto``): crop + resize, flips, 90-degree rotations (and a user's albumentations
pipeline) on the image as it was read, uint8 or float, plus the view's photometric random
numbers (`batch_augment.draw`). Everything random comes from torch's global generator, which
`acclimate.resume.SeededItems` seeds per item, in a few calls."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor
from torchvision.transforms import v2

from acclimate.data.batch_augment import draw

TRIES = 10  # crop boxes tried before the centre-crop fallback, as torchvision


def crop_box(
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    u: list[float],
) -> tuple[int, int, int, int]:
    """torchvision's ``RandomResizedCrop`` box (top, left, h, w) from ``4 * TRIES`` uniforms:
    area fraction in ``scale``, log aspect ratio uniform in ``log(ratio)``, position uniform;
    the centre crop clamped to ``ratio`` when no try fits."""
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for t in range(TRIES):
        ua, ur, ui, uj = u[4 * t : 4 * t + 4]
        target = area * (scale[0] + (scale[1] - scale[0]) * ua)
        aspect = math.exp(log_lo + (log_hi - log_lo) * ur)
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(ui * (height - h + 1)), int(uj * (width - w + 1)), h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        w, h = int(round(height * max(ratio))), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


class ViewGeometry:
    """One view's per-sample work: ``(C, H, W)`` -> (``(C, size, size)`` view, ``(n_draws,)``
    int32 draws for its batched photometric ops).

    Args:
        size: output side.
        scale, ratio: crop area fraction and aspect-ratio ranges (``RandomResizedCrop``).
        flips: ``none``, ``horizontal`` or ``all`` (horizontal, vertical and 90-degree turns).
        n_draws: random numbers its photometric ops need (``BatchPhotometric.n_draws``).
        before: applied to the image first (per-channel clipping); None: nothing.
        after: applied to the finished view (a user's albumentations pipeline); None: nothing.
    """

    def __init__(
        self,
        size: int,
        scale: tuple[float, float],
        ratio: tuple[float, float],
        flips: str,
        n_draws: int,
        before: Callable[[Tensor], Tensor] | None = None,
        after: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        if flips not in ("none", "horizontal", "all"):
            raise ValueError(f"flips must be none, horizontal or all, got {flips!r}")
        self.size, self.scale, self.ratio, self.flips = size, tuple(scale), tuple(ratio), flips
        self.n_draws, self.before, self.after = n_draws, before, after

    def __call__(self, image: Tensor) -> tuple[Tensor, Tensor]:
        x = image if self.before is None else self.before(image)
        u = torch.rand(4 * TRIES + 3, dtype=torch.float64).tolist()
        top, left, h, w = crop_box(x.shape[-2], x.shape[-1], self.scale, self.ratio, u)
        x = v2.functional.resized_crop(x, top, left, h, w, [self.size, self.size], antialias=True)
        hflip, vflip, turn = u[-3] < 0.5, u[-2] < 0.5, int(u[-1] * 4)
        if self.flips == "none":
            hflip = vflip = False
        if self.flips != "all":
            vflip, turn = False, 0
        dims = [d for d, flip in ((-1, hflip), (-2, vflip)) if flip]
        if dims:
            x = x.flip(dims)
        if turn:
            x = torch.rot90(x, turn, dims=(-2, -1))
        if self.after is not None:
            x = self.after(x)
        return x, draw(self.n_draws)
