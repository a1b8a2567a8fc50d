"""Augmentations on uint8 tensors: DINO multi-crop views and the deterministic eval transform."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn
from torchvision.transforms import v2

Preset = Literal["natural", "satellite", "medical"]


def _photometric(preset: Preset, channels: int, strength: float) -> list[nn.Module]:
    """Colour/intensity jitter for a preset; hue and saturation only exist for RGB."""
    if strength <= 0:
        return []
    if preset == "natural" and channels == 3:
        jitter = v2.ColorJitter(0.4 * strength, 0.4 * strength, 0.2 * strength, 0.1 * strength)
        return [v2.RandomApply([jitter], p=0.8), v2.RandomGrayscale(p=0.2)]
    # satellite and medical: intensity only (no hue shift: colour carries meaning there)
    jitter = v2.ColorJitter(brightness=0.4 * strength, contrast=0.4 * strength)
    return [v2.RandomApply([jitter], p=0.8)] if channels in (1, 3) else []


def _geometric(preset: Preset) -> list[nn.Module]:
    if preset == "satellite":  # overhead imagery has no canonical orientation
        return [v2.RandomHorizontalFlip(), v2.RandomVerticalFlip(), RandomRot90()]
    if preset == "medical":  # left/right often carries meaning (situs): no flips by default
        return []
    return [v2.RandomHorizontalFlip()]


class RandomRot90(nn.Module):
    """Rotate by a random multiple of 90 degrees. x: (C, H, W)."""

    def forward(self, x: Tensor) -> Tensor:
        k = int(torch.randint(4, ()).item())
        return torch.rot90(x, k, dims=(-2, -1)) if k else x


def _blur(size: int, p: float) -> list[nn.Module]:
    if p <= 0:
        return []
    kernel = max(3, (size // 10) | 1)  # odd, about a tenth of the crop as in DINO (23 px at 224)
    return [v2.RandomApply([v2.GaussianBlur(kernel, sigma=(0.1, 2.0))], p=p)]


def _to_float(mean: Sequence[float], std: Sequence[float]) -> list[nn.Module]:
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]


class MultiCropTransform:
    """DINO multi-crop (Caron et al. 2021, Sec. 3.1): 2 global views and ``n_local`` local views.

    Input: a uint8 image tensor (C, H, W). Output: ``{"global": [2 x (C, G, G)], "local":
    [n_local x (C, L, L)]}`` float tensors, normalised with ``mean``/``std``.

    Args:
        global_size: global crop side G (default: ``data.image_size``).
        local_size: local crop side L (default: about G * 96 / 224, a multiple of 8).
        n_local: local crops per image (paper: 6-10; 0 disables multi-crop).
        global_scale: area range of global crops (paper: 0.4-1; raise the lower bound for
            small images such as 64 px tiles).
        local_scale: area range of local crops (paper: 0.05-0.4).
        preset: ``natural`` (DINO's colour jitter, grayscale, blur, solarise), ``satellite``
            (flips and 90-degree rotations, intensity jitter only) or ``medical`` (no flips,
            intensity jitter only).
        color_strength: multiplies the colour/intensity jitter (0 turns it off).
        blur_p: probability of Gaussian blur on the first global view (the second gets 0.1,
            locals 0.5, as in the paper, scaled by blur_p).
        solarize_p: probability of solarisation of the second global view (natural preset only).
        mean, std: per-channel normalisation (filled in by the trainer from ``data``).
    """

    def __init__(
        self,
        global_size: int | None = None,
        local_size: int | None = None,
        n_local: int = 6,
        global_scale: tuple[float, float] = (0.4, 1.0),
        local_scale: tuple[float, float] = (0.05, 0.4),
        preset: Preset = "natural",
        color_strength: float = 1.0,
        blur_p: float = 1.0,
        solarize_p: float = 0.2,
        channels: int = 3,
        mean: Sequence[float] = (0.5, 0.5, 0.5),
        std: Sequence[float] = (0.25, 0.25, 0.25),
    ) -> None:
        for name, (lo, hi) in (("global_scale", global_scale), ("local_scale", local_scale)):
            if not 0 < lo <= hi <= 1:
                raise ValueError(f"{name} must satisfy 0 < min <= max <= 1, got {[lo, hi]}")
        if n_local < 0:
            raise ValueError(f"n_local must be >= 0, got {n_local}")
        if len(mean) != channels or len(std) != channels:
            raise ValueError(f"mean/std have {len(mean)} values but the images have {channels}")
        g = global_size or 224
        self.global_size = g
        self.local_size = local_size or max(8, int(round(g * 96 / 224 / 8)) * 8)
        self.n_local = n_local
        geo = _geometric(preset)
        colour = _photometric(preset, channels, color_strength)
        norm = _to_float(mean, std)
        solarize = (
            [v2.RandomSolarize(threshold=128, p=solarize_p)]
            if preset == "natural" and channels == 3 and solarize_p > 0
            else []
        )

        def crop(size: int, scale: tuple[float, float]) -> nn.Module:
            return v2.RandomResizedCrop(size, scale=tuple(scale), antialias=True)

        self.global1 = v2.Compose([crop(g, global_scale), *geo, *colour, *_blur(g, blur_p), *norm])
        self.global2 = v2.Compose(
            [crop(g, global_scale), *geo, *colour, *_blur(g, 0.1 * blur_p), *solarize, *norm]
        )
        ls = self.local_size
        self.local = v2.Compose(
            [crop(ls, local_scale), *geo, *colour, *_blur(ls, 0.5 * blur_p), *norm]
        )

    def __call__(self, image: Tensor) -> dict[str, list[Tensor]]:
        return {
            "global": [self.global1(image), self.global2(image)],
            "local": [self.local(image) for _ in range(self.n_local)],
        }


class EvalTransform:
    """Deterministic preprocessing for features: resize the short side, centre-crop, normalise.

    uint8 (C, H, W) -> float (C, size, size). The same steps are written into the export's
    ``config.json`` (crop_pct 1.0) so that timm's data config reproduces them.
    """

    def __init__(self, size: int, mean: Sequence[float], std: Sequence[float]) -> None:
        self.size = size
        self.t = v2.Compose(
            [v2.Resize(size, antialias=True), v2.CenterCrop(size), *_to_float(mean, std)]
        )

    def __call__(self, image: Tensor) -> Tensor:
        return self.t(image)
