"""The per-sample photometric ops (``augment.device: per_sample``) on one image (C, H, W),
uint8 or float32, any band count; `batch_augment` holds their batched counterparts."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torchvision.transforms import v2

from acclimate.data.batch_augment import HED_FROM_RGB, RGB_FROM_HED


def to_unit_float(x: Tensor) -> Tensor:
    """uint8 -> float32 / 255; float tensors unchanged."""
    return x.to(torch.float32) / 255.0 if x.dtype == torch.uint8 else x


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
        hed = od @ HED_FROM_RGB
        a = _uniform(1 - self.sigma, 1 + self.sigma, (3,))
        b = _uniform(-self.sigma, self.sigma, (3,))
        od = (hed * a + b) @ RGB_FROM_HED
        return torch.exp(-od).clamp(0, 1).permute(2, 0, 1).contiguous()


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
