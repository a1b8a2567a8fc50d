"""Augmentations on (C, H, W) tensors with any channel count, uint8 or float32: DINO multi-crop
views with domain presets, and the deterministic eval transform.

uint8 images (8-bit data) are scaled to [0, 1] before normalisation; float32 images (16-bit,
DICOM, NIfTI, ...) are used as the readers return them (``readers.py``). The ``natural`` preset
on RGB keeps torchvision's colour jitter on uint8; every other preset uses the float ops below,
which work on any number of bands.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn
from torchvision.transforms import v2

Preset = Literal["natural", "satellite", "medical", "microscopy"]


def to_unit_float(x: Tensor) -> Tensor:
    """uint8 -> float32 / 255; float tensors unchanged."""
    return x.to(torch.float32) / 255.0 if x.dtype == torch.uint8 else x


Clip = tuple[Sequence[float], Sequence[float]]  # per-channel (low, high) in [0, 1] units


class ClipChannels(nn.Module):
    """Clip each channel to its own [low, high] (``data.clip``: percentile bounds of the training
    data from its statistics), in the units the statistics use: uint8 images are scaled to
    [0, 1] first, float images are clipped as the readers return them. x: (C, H, W) -> float32.
    """

    def __init__(self, low: Sequence[float], high: Sequence[float]) -> None:
        super().__init__()
        if len(low) != len(high):
            raise ValueError(f"clip has {len(low)} low and {len(high)} high bounds")
        self.low = torch.tensor([float(v) for v in low], dtype=torch.float32)[:, None, None]
        self.high = torch.tensor([float(v) for v in high], dtype=torch.float32)[:, None, None]

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-3] != self.low.shape[0]:
            raise ValueError(
                f"clip bounds for {self.low.shape[0]} channels, image has {x.shape[-3]}"
            )
        x = to_unit_float(x)
        return torch.maximum(torch.minimum(x, self.high), self.low)


def _clip(clip: Clip | None, channels: int | None = None) -> list[nn.Module]:
    if clip is None:
        return []
    if channels is not None and len(clip[0]) != channels:
        raise ValueError(
            f"clip has bounds for {len(clip[0])} channels but the images have {channels}"
        )
    return [ClipChannels(*clip)]


def _uniform(lo: float, hi: float, size: tuple[int, ...] = ()) -> Tensor:
    return torch.empty(size).uniform_(lo, hi)


class IntensityJitter(nn.Module):
    """Brightness (multiplicative) and contrast (around the image mean) jitter for any band
    count, no hue: x -> (x * b - m) * c + m. ``per_band`` draws factors per band (independent
    fluorescence stains), else one factor for all bands (band ratios kept, as spectra carry the
    meaning in satellite data). uint8 input comes out as float in [0, 1]; float input is not
    clamped (its range is the reader's). x: (C, H, W)."""

    def __init__(self, brightness: float, contrast: float, per_band: bool = False) -> None:
        super().__init__()
        self.brightness, self.contrast, self.per_band = brightness, contrast, per_band

    def forward(self, x: Tensor) -> Tensor:
        was_uint8 = x.dtype == torch.uint8
        x = to_unit_float(x)
        size = (x.shape[0], 1, 1) if self.per_band else (1, 1, 1)
        b = _uniform(1 - self.brightness, 1 + self.brightness, size)
        c = _uniform(1 - self.contrast, 1 + self.contrast, size)
        x = x * b
        m = x.mean(dim=(-2, -1), keepdim=True) if self.per_band else x.mean()
        x = (x - m) * c + m
        return x.clamp(0, 1) if was_uint8 else x


class WindowJitter(nn.Module):
    """Intensity windowing jitter: a random window of centre 0.5 + U(-shift, shift) and width
    1 / U(1/scale, scale), as a radiologist would re-window, then clamp. x: (C, H, W).

    Images in [0, 1] (windowed DICOM, 8/16-bit X-rays) are windowed in those units and clamped to
    [0, 1]. Images with values outside [0, 1] (NIfTI or float TIFF in physical units, no
    ``data.window``) are jittered relative to their own range: their 1st-99th percentiles play
    the role of [0, 1], so the output stays in the input's units (and its normalisation).
    """

    max_samples = 100_000  # pixels sampled for the percentiles

    def __init__(self, shift: float = 0.1, scale: float = 1.25) -> None:
        super().__init__()
        self.shift, self.scale = shift, scale

    def _range(self, x: Tensor) -> tuple[float, float]:
        flat = x.flatten()
        if flat.numel() > self.max_samples:
            flat = flat[:: -(-flat.numel() // self.max_samples)]
        lo, hi = torch.quantile(flat.float(), torch.tensor([0.01, 0.99])).tolist()
        return (lo, hi) if hi > lo else (float(flat.min()), float(flat.max()))

    def forward(self, x: Tensor) -> Tensor:
        x = to_unit_float(x)
        centre = 0.5 + float(_uniform(-self.shift, self.shift))
        gain = math.exp(float(_uniform(-math.log(self.scale), math.log(self.scale))))
        if x.numel() == 0 or (float(x.min()) >= 0 and float(x.max()) <= 1):
            return ((x - centre) * gain + 0.5).clamp(0, 1)
        lo, hi = self._range(x)
        if hi <= lo:  # constant image: nothing to window
            return x
        unit = (x - lo) / (hi - lo)
        return ((unit - centre) * gain + 0.5).clamp(0, 1) * (hi - lo) + lo


# Stain matrix of Ruifrok & Johnston (2001): rows are haematoxylin, eosin, DAB in optical density.
_HED_FROM_RGB = torch.linalg.inv(
    torch.tensor([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
)
_RGB_FROM_HED = torch.tensor([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])


class StainJitter(nn.Module):
    """H&E stain augmentation (Tellez et al. 2018): RGB -> optical density -> HED stains, each
    stain scaled by U(1 - sigma, 1 + sigma) and shifted by U(-sigma, sigma), and back.
    x: (3, H, W) uint8 or float in [0, 1]; returns float in [0, 1]."""

    def __init__(self, sigma: float = 0.05) -> None:
        super().__init__()
        self.sigma = sigma

    def forward(self, x: Tensor) -> Tensor:
        x = to_unit_float(x)
        od = -torch.log(x.clamp(min=1 / 255)).permute(1, 2, 0)  # (H, W, 3)
        hed = od @ _HED_FROM_RGB
        a = _uniform(1 - self.sigma, 1 + self.sigma, (3,))
        b = _uniform(-self.sigma, self.sigma, (3,))
        od = (hed * a + b) @ _RGB_FROM_HED
        return torch.exp(-od).clamp(0, 1).permute(2, 0, 1).contiguous()


def _photometric(preset: Preset, channels: int, strength: float) -> list[nn.Module]:
    """Colour/intensity jitter for a preset; hue and saturation only for natural RGB photos."""
    if strength <= 0:
        return []
    if preset == "natural" and channels == 3:
        jitter = v2.ColorJitter(0.4 * strength, 0.4 * strength, 0.2 * strength, 0.1 * strength)
        return [v2.RandomApply([jitter], p=0.8), v2.RandomGrayscale(p=0.2)]
    if preset == "medical":  # windowing, no colour ops
        return [v2.RandomApply([WindowJitter(0.1 * strength, 1 + 0.25 * strength)], p=0.8)]
    if preset == "microscopy":
        ops: list[nn.Module] = []
        if channels == 3:
            ops.append(v2.RandomApply([StainJitter(0.05 * strength)], p=0.8))
        jitter = IntensityJitter(0.2 * strength, 0.2 * strength, per_band=channels != 3)
        return [*ops, v2.RandomApply([jitter], p=0.8)]
    # satellite (and natural non-RGB): intensity only, one factor for all bands (no hue shift)
    return [v2.RandomApply([IntensityJitter(0.4 * strength, 0.4 * strength)], p=0.8)]


def _geometric(preset: Preset) -> list[nn.Module]:
    if preset in ("satellite", "microscopy"):  # overhead / slide images: no canonical orientation
        return [v2.RandomHorizontalFlip(), v2.RandomVerticalFlip(), RandomRot90()]
    if preset == "medical":  # left/right often carries meaning (situs): no flips by default
        return []
    return [v2.RandomHorizontalFlip()]


class RandomSolarize(nn.Module):
    """Solarise with probability p at half the range (128 for uint8, 0.5 for float)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if float(torch.rand(())) >= self.p:
            return x
        return v2.functional.solarize(x, 128 if x.dtype == torch.uint8 else 0.5)


class RandomRot90(nn.Module):
    """Rotate by a random multiple of 90 degrees. x: (C, H, W)."""

    def forward(self, x: Tensor) -> Tensor:
        k = int(torch.randint(4, ()).item())
        return torch.rot90(x, k, dims=(-2, -1)) if k else x


# Satellite crops (``preset: satellite``): overhead imagery has a fixed ground sampling distance
# (10 m per pixel for Sentinel-2's visible bands), so objects have a known size in pixels. Crops
# keep the aspect ratio (square) and the zoom moderate: a global crop covers 25-100% of the tile
# (side 50-100%, at most 2x zoom), a local crop 10-40% (side 32-63%). These are the preset's
# defaults for ``global_scale``/``local_scale``; values set in a recipe are used as given.
SATELLITE_GLOBAL_SCALE = (0.25, 1.0)
SATELLITE_LOCAL_SCALE = (0.1, 0.4)


def _blur(size: int, p: float) -> list[nn.Module]:
    if p <= 0:
        return []
    kernel = max(3, (size // 10) | 1)  # odd, about a tenth of the crop as in DINO (23 px at 224)
    return [v2.RandomApply([v2.GaussianBlur(kernel, sigma=(0.1, 2.0))], p=p)]


def _to_float(mean: Sequence[float], std: Sequence[float]) -> list[nn.Module]:
    # ToDtype scales uint8 to [0, 1] and leaves float32 as it is
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]


class MultiCropTransform:
    """DINO multi-crop (Caron et al. 2021, Sec. 3.1): 2 global views and ``n_local`` local views.

    Input: an image tensor (C, H, W), uint8 or float32, any C. Output:
    ``{"global": [2 x (C, G, G)], "local": [n_local x (C, L, L)]}`` float tensors, normalised
    with ``mean``/``std``.

    Args:
        global_size: global crop side G (default: ``data.image_size``).
        local_size: local crop side L (default: about G * 96 / 224, a multiple of 8).
        n_local: local crops per image (paper: 6-10; 0 disables multi-crop).
        global_scale: area range of global crops (default: the paper's 0.4-1, the satellite
            preset's 0.25-1; raise the lower bound for small images such as 64 px tiles).
        local_scale: area range of local crops (default: the paper's 0.05-0.4, the satellite
            preset's 0.1-0.4).
        preset: ``natural`` (DINO's colour jitter, grayscale, blur, solarise on RGB),
            ``satellite`` (square crops with scale-aware areas, flips, 90-degree rotations,
            brightness/contrast with one factor for all bands: no hue or colour jitter; see
            ``SATELLITE_GLOBAL_SCALE``), ``medical`` (no flips, intensity windowing
            jitter, no colour ops) or ``microscopy`` (flips, 90-degree rotations, H&E stain
            jitter on RGB, per-band intensity jitter otherwise).
        color_strength: multiplies the colour/intensity jitter (0 turns it off).
        blur_p: probability of Gaussian blur on the first global view (the second gets 0.1,
            locals 0.5, as in the paper, scaled by blur_p).
        solarize_p: probability of solarisation of the second global view (natural preset only).
        mean, std: per-channel normalisation (filled in by the trainer from ``data``).
        clip: per-channel (low, high) bounds applied before everything else (filled in by the
            trainer from ``data.clip``); None: no clipping.
    """

    def __init__(
        self,
        global_size: int | None = None,
        local_size: int | None = None,
        n_local: int = 6,
        global_scale: tuple[float, float] | None = None,
        local_scale: tuple[float, float] | None = None,
        preset: Preset = "natural",
        color_strength: float = 1.0,
        blur_p: float = 1.0,
        solarize_p: float = 0.2,
        channels: int = 3,
        mean: Sequence[float] = (0.5, 0.5, 0.5),
        std: Sequence[float] = (0.25, 0.25, 0.25),
        clip: Clip | None = None,
    ) -> None:
        satellite = preset == "satellite"
        if global_scale is None:
            global_scale = SATELLITE_GLOBAL_SCALE if satellite else (0.4, 1.0)
        if local_scale is None:
            local_scale = SATELLITE_LOCAL_SCALE if satellite else (0.05, 0.4)
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
        first = _clip(clip, channels)
        solarize = (
            [RandomSolarize(p=solarize_p)]
            if preset == "natural" and channels == 3 and solarize_p > 0
            else []
        )

        # overhead imagery has a fixed ground sampling distance: square crops, no stretching
        ratio = (1.0, 1.0) if satellite else (3 / 4, 4 / 3)

        def crop(size: int, scale: tuple[float, float]) -> nn.Module:
            return v2.RandomResizedCrop(size, scale=tuple(scale), ratio=ratio, antialias=True)

        self.global1 = v2.Compose(
            [*first, crop(g, global_scale), *geo, *colour, *_blur(g, blur_p), *norm]
        )
        self.global2 = v2.Compose(
            [*first, crop(g, global_scale), *geo, *colour, *_blur(g, 0.1 * blur_p), *solarize]
            + norm
        )
        ls = self.local_size
        self.local = v2.Compose(
            [*first, crop(ls, local_scale), *geo, *colour, *_blur(ls, 0.5 * blur_p), *norm]
        )

    def __call__(self, image: Tensor) -> dict[str, list[Tensor]]:
        return {
            "global": [self.global1(image), self.global2(image)],
            "local": [self.local(image) for _ in range(self.n_local)],
        }


class EvalTransform:
    """Deterministic preprocessing for features: resize the short side, centre-crop, normalise.

    (C, H, W) uint8 or float32 -> float (C, size, size). The same steps are written into the
    export's ``config.json`` (crop_pct 1.0) so that timm's data config reproduces them. With
    ``clip`` (per-channel (low, high), from ``data.clip``), values are clipped first, as in
    training; timm's data config cannot express that, ``acclimate.load`` applies it.
    """

    def __init__(
        self,
        size: int,
        mean: Sequence[float],
        std: Sequence[float],
        clip: Clip | None = None,
    ) -> None:
        self.size = size
        self.clip = clip
        self.t = v2.Compose(
            [
                *_clip(clip, len(mean)),
                v2.Resize(size, antialias=True),
                v2.CenterCrop(size),
                *_to_float(mean, std),
            ]
        )

    def __call__(self, image: Tensor) -> Tensor:
        return self.t(image)
