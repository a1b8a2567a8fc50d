"""Photometric augmentation of whole batches: the presets' colour/intensity ops as vectorised
tensor ops with per-sample random factors, on the CPU or on the accelerator.

Every op works on views ``x: (B, C, H, W)`` float32 in [0, 1] units (uint8 / 255; float images
as the readers return them) and takes ``u: (B, n_draws)`` uniform numbers in [0, 1), one row per
sample: ``u[:, 0] < p`` decides whether the op applies to that sample, the other columns are
its random factors, mapped to the same ranges as the per-sample ops of ``transforms.py``
(torchvision's ``ColorJitter``, ``RandomGrayscale``, ``GaussianBlur``, and acclimate's
``IntensityJitter``, ``WindowJitter``, ``StainJitter``, ``RandomSolarize``).

The random numbers are drawn per item, in the DataLoader worker, from the generator that
`acclimate.resume.SeededItems` seeds with (seed, epoch, index) (`draw`), and travel with the
batch as int32 (immune to the precision plugin's float casts): a sample's factors do not depend
on the batch it is in, the device, or where the batch is augmented, so resuming stays exact (its
pixels do not either, but for the CPU blur's kernel cut, below 1e-4: `GaussianBlur`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from acclimate.data.color import grayscale, shift_hue

DRAW_BITS = 24  # uniforms u = k / 2**24: exact in float32


def draw(n: int) -> Tensor:
    """``n`` random numbers of one view, (n,) int32, from torch's global generator."""
    return torch.randint(0, 1 << DRAW_BITS, (n,), dtype=torch.int32)


def uniforms(draws: Tensor) -> Tensor:
    """int32 draws -> float32 uniforms in [0, 1), same shape."""
    return draws.to(torch.float32) * (1.0 / (1 << DRAW_BITS))


def _span(u: Tensor, lo: float, hi: float) -> Tensor:
    return lo + (hi - lo) * u


def _rows(t: Tensor) -> Tensor:
    return t.reshape(-1, 1, 1, 1)


SUBSET_DEVICES = ("cpu",)  # device types where `masked` computes only the chosen samples
CPU_CHUNK_BYTES = 1 << 20  # on the CPU, views are augmented in chunks of about this size


def masked(x: Tensor, mask: Tensor, u: Tensor, fn: Callable[[Tensor, Tensor], Tensor]) -> Tensor:
    """``fn(x[i], u[i])`` for the samples where ``mask`` (B,) is True, ``x[i]`` elsewhere.

    On the CPU (``SUBSET_DEVICES``) only the chosen samples are computed and written into ``x``
    in place; on an accelerator every sample is and ``torch.where`` picks (no host
    synchronisation)."""
    if x.device.type not in SUBSET_DEVICES:
        return torch.where(_rows(mask), fn(x, u), x)
    rows = mask.nonzero().squeeze(1)
    if rows.numel() == len(x):
        return fn(x, u)
    if rows.numel():
        x[rows] = fn(x[rows], u[rows]).to(x.dtype)
    return x


@dataclass(frozen=True)
class BatchOp:
    """One op applied with probability ``p`` per sample; ``factors`` random numbers each."""

    p: float

    factors = 0

    def draws(self, channels: int) -> int:
        return 1 + self.factors

    def __call__(self, x: Tensor, u: Tensor, unit: bool) -> Tensor:
        """x: (B, C, H, W) float; u: (B, draws); ``unit``: x came from uint8 (in [0, 1])."""
        return masked(x, u[:, 0] < self.p, u[:, 1:], lambda xs, us: self.apply(xs, us, unit))

    def apply(self, x: Tensor, u: Tensor, unit: bool) -> Tensor:
        raise NotImplementedError


@dataclass(frozen=True)
class ColorJitter(BatchOp):
    """torchvision's ``ColorJitter`` on RGB: brightness, contrast, saturation (each a factor in
    [max(0, 1 - v), 1 + v]) and hue (a shift in [-hue, hue]) in a random order per sample,
    clamped to [0, 1] after each, as torchvision does."""

    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0
    hue: float = 0.0

    factors = 8  # four factors, four keys whose ranks are the order
    OPS = 4

    def __call__(self, x: Tensor, u: Tensor, unit: bool) -> Tensor:
        if x.device.type not in SUBSET_DEVICES:
            return super().__call__(x, u, unit)
        # On the CPU: the chosen samples gathered once, sorted by their order of ops, so that
        # at each step the samples sharing the ops so far are one contiguous slice, changed in
        # place (one gather and one scatter instead of one pair per step and op).
        factors, order = self._factors(u[:, 1:])
        code = (order * self.OPS ** torch.arange(self.OPS - 1, -1, -1)).sum(dim=1)  # base OPS
        applied = u[:, 0] < self.p
        n = int(applied.sum())
        if n == 0:
            return x
        code[~applied] = self.OPS**self.OPS  # not applied: sorted last, left out
        rows = code.argsort(stable=True)[:n]
        codes = code[rows].tolist()
        whole = n == len(x) and bool((rows == torch.arange(n)).all())
        xs = x if whole else x[rows]
        factors, order = factors[rows], order[rows].tolist()
        for step in range(self.OPS):
            div = self.OPS ** (self.OPS - 1 - step)
            start = 0
            while start < n:  # runs of samples whose first step + 1 ops are the same
                end = start + 1
                while end < n and codes[end] // div == codes[start] // div:
                    end += 1
                k, run = order[start][step], xs[start:end]
                _JITTER_OPS[k](run, _rows(factors[start:end, k]), out=run)
                start = end
        if not whole:
            x[rows] = xs
        return x

    def _factors(self, u: Tensor) -> tuple[Tensor, Tensor]:
        """u: (B, 8) -> factors (B, 4) (brightness, contrast, saturation, hue) and the order of
        the ops (B, 4) (indices into that tuple, first op first)."""
        spans = (self.brightness, self.contrast, self.saturation)
        f = [_span(u[:, k], max(0.0, 1 - v), 1 + v) for k, v in enumerate(spans)]
        f.append(_span(u[:, 3], -self.hue, self.hue))
        return torch.stack(f, dim=1), u[:, 4:8].argsort(dim=1)

    def apply(self, x: Tensor, u: Tensor, unit: bool) -> Tensor:
        f, order = self._factors(u)
        for step in range(self.OPS):
            for k, op in enumerate(_JITTER_OPS):
                chosen = order[:, step] == k
                x = masked(x, chosen, f, lambda xs, fs, k=k, op=op: op(xs, _rows(fs[:, k])))
        return x


# The four ops of the colour jitter; ``out=x`` changes x (a slice of the samples) in place,
# ``out=None`` returns a new tensor (the accelerators' path, which keeps x for `torch.where`).
def _brightness(x: Tensor, f: Tensor, out: Tensor | None = None) -> Tensor:
    return torch.mul(x, f, out=out).clamp_(0, 1)


def _contrast(x: Tensor, f: Tensor, out: Tensor | None = None) -> Tensor:
    # the mean luma as the luma of the channel means: the same number up to float rounding,
    # without a luma image
    return _toward(x, grayscale(x.mean(dim=(-2, -1), keepdim=True)), f, out)


def _saturation(x: Tensor, f: Tensor, out: Tensor | None = None) -> Tensor:
    return _toward(x, grayscale(x), f, out)


def _toward(x: Tensor, gray: Tensor, f: Tensor, out: Tensor | None) -> Tensor:
    """``f * x + (1 - f) * gray``, clamped to [0, 1]; ``gray`` (computed from x before ``out``
    overwrites it) is consumed."""
    other = gray.mul_(1 - f)
    return torch.mul(x, f, out=out).add_(other).clamp_(0, 1)


_JITTER_OPS = (_brightness, _contrast, _saturation, shift_hue)


@dataclass(frozen=True)
class Grayscale(BatchOp):
    """torchvision's ``RandomGrayscale``: luma replicated to the 3 channels."""

    def apply(self, x: Tensor, u: Tensor, unit: bool) -> Tensor:
        return grayscale(x).expand_as(x).contiguous()


@dataclass(frozen=True)
class IntensityJitter(BatchOp):
    """``transforms.IntensityJitter``: x -> (x * b - m) * c + m with b in [1 - brightness,
    1 + brightness], c in [1 - contrast, 1 + contrast], m the mean of x * b; per band or one
    factor for all bands; clamped to [0, 1] for uint8 data (also after the microscopy preset's
    stain jitter, where the per-sample path, seeing a float image by then, does not clamp)."""

    brightness: float = 0.0
    contrast: float = 0.0
    per_band: bool = False

    def draws(self, channels: int) -> int:
        return 1 + 2 * (channels if self.per_band else 1)

    def apply(self, x: Tensor, u: Tensor, unit: bool) -> Tensor:
        n = x.shape[1] if self.per_band else 1
        b = _span(u[:, :n], 1 - self.brightness, 1 + self.brightness)[:, :, None, None]
        c = _span(u[:, n : 2 * n], 1 - self.contrast, 1 + self.contrast)[:, :, None, None]
        x = x * b
        dims = (-2, -1) if self.per_band else (-3, -2, -1)
        m = x.mean(dim=dims, keepdim=True)
        x = (x - m) * c + m
        return x.clamp(0, 1) if unit else x


@dataclass(frozen=True)
class WindowJitter(BatchOp):
    """``transforms.WindowJitter``: window centre 0.5 + U(-shift, shift), width 1 / gain with
    log gain in U(-log scale, log scale); images outside [0, 1] are windowed relative to their
    own 1st-99th percentiles and stay in their units."""

    shift: float = 0.1
    scale: float = 1.25

    factors = 2
    max_samples = 100_000  # pixels per image sampled for the percentiles

    def apply(self, x: Tensor, u: Tensor, unit: bool) -> Tensor:
        centre = _rows(0.5 + _span(u[:, 0], -self.shift, self.shift))
        gain = _rows(torch.exp(_span(u[:, 1], -math.log(self.scale), math.log(self.scale))))
        flat = x.flatten(1)
        inside = (flat.amin(1) >= 0) & (flat.amax(1) <= 1)
        windowed = ((x - centre) * gain + 0.5).clamp(0, 1)
        if unit or bool(inside.all()):
            return windowed
        lo, hi = self._range(flat)
        width = (hi - lo).clamp(min=1e-30)
        relative = (((x - lo) / width - centre) * gain + 0.5).clamp(0, 1) * width + lo
        relative = torch.where(hi > lo, relative, x)  # constant image: nothing to window
        return torch.where(_rows(inside), windowed, relative)

    def _range(self, flat: Tensor) -> tuple[Tensor, Tensor]:
        cap = max(1, min(self.max_samples, (1 << 24) // len(flat)))  # torch.quantile's limit
        sample = flat[:, :: -(-flat.shape[1] // cap)]
        q = torch.tensor([0.01, 0.99], device=flat.device)
        lo, hi = torch.quantile(sample, q, dim=1)
        degenerate = hi <= lo
        lo = torch.where(degenerate, flat.amin(1), lo)
        hi = torch.where(degenerate, flat.amax(1), hi)
        return _rows(lo), _rows(hi)


# Stain matrix of Ruifrok & Johnston (2001): rows are haematoxylin, eosin, DAB in optical density.
RGB_FROM_HED = torch.tensor([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
HED_FROM_RGB = torch.linalg.inv(RGB_FROM_HED)


@dataclass(frozen=True)
class StainJitter(BatchOp):
    """``transforms.StainJitter`` (Tellez et al. 2018): optical density -> HED stains, each
    scaled by U(1 - sigma, 1 + sigma) and shifted by U(-sigma, sigma), and back; folded into
    one 3x3 matrix and offset per sample. RGB only."""

    sigma: float = 0.05

    factors = 6

    def apply(self, x: Tensor, u: Tensor, unit: bool) -> Tensor:
        a = _span(u[:, :3], 1 - self.sigma, 1 + self.sigma)
        b = _span(u[:, 3:6], -self.sigma, self.sigma)
        to_hed, to_rgb = HED_FROM_RGB.to(x.device), RGB_FROM_HED.to(x.device)
        matrix = (to_hed * a[:, None, :]) @ to_rgb  # (B, 3, 3): od -> jittered od
        offset = b @ to_rgb  # (B, 3)
        od = -torch.log(x.clamp(min=1 / 255))
        od = torch.einsum("bchw,bcd->bdhw", od, matrix) + offset[:, :, None, None]
        return torch.exp(-od).clamp(0, 1)


@dataclass(frozen=True)
class GaussianBlur(BatchOp):
    """torchvision's ``GaussianBlur(kernel, sigma=(lo, hi))``: sigma ~ U(lo, hi) per sample,
    reflect padding; separable (rows, then columns).

    On the CPU the kernel is cut at ``TRUNCATE`` standard deviations of the largest sigma in the
    chunk (as ``scipy.ndimage.gaussian_filter`` does) when that is inside ``kernel``: the weights
    left out sum to under 1e-4 of the total, and a small sigma costs a short kernel (DINO's 23
    taps at 224 px hold sigma 2.0 to 5.5 deviations; sigma 0.5 needs 5 taps)."""

    kernel: int = 3
    sigma: tuple[float, float] = (0.1, 2.0)

    factors = 1
    TRUNCATE = 4.0

    def __post_init__(self) -> None:
        if self.kernel < 1 or self.kernel % 2 == 0:
            raise ValueError(f"blur kernel must be odd and positive, got {self.kernel}")

    def apply(self, x: Tensor, u: Tensor, unit: bool) -> Tensor:
        n, c, h, w = x.shape
        sigma = _span(u[:, 0], *self.sigma)
        half = self.kernel // 2
        if x.device.type in SUBSET_DEVICES:  # elsewhere no host synchronisation for the length
            half = min(half, math.ceil(self.TRUNCATE * float(sigma.max())))
        if half == 0:
            return x
        pos = torch.arange(-half, half + 1, device=x.device, dtype=torch.float32)
        k = torch.exp(-0.5 * (pos[None, :] / sigma[:, None]) ** 2)
        k = (k / k.sum(dim=1, keepdim=True)).T.reshape(-1, n, 1, 1, 1)  # (taps, n, 1, 1, 1)
        y = F.pad(x, (half, half, half, half), mode="reflect")
        # each pass a sum of shifted slices, weighted per sample: faster than a depthwise
        # convolution with one group per sample and channel (same sums, up to float rounding)
        rows = y[:, :, :h] * k[0]
        for i in range(1, len(k)):
            rows.addcmul_(y[:, :, i : i + h], k[i])
        out = rows[..., :w] * k[0]
        for i in range(1, len(k)):
            out.addcmul_(rows[..., i : i + w], k[i])
        return out


@dataclass(frozen=True)
class Solarize(BatchOp):
    """Invert values at or above half the range (``transforms.RandomSolarize``)."""

    def apply(self, x: Tensor, u: Tensor, unit: bool) -> Tensor:
        # 0.5 - |x - 0.5|: x below half, 1 - x from half up, without a bool mask (a float
        # op is several times cheaper on the CPU)
        return (x - 0.5).abs_().neg_().add_(0.5)


def preset_ops(preset: str, channels: int, strength: float) -> list[BatchOp]:
    """The colour/intensity jitter of a preset (the one home of its probabilities and ranges;
    ``transforms`` builds its per-sample ops from these). Hue and saturation only for natural
    RGB photos."""
    if strength <= 0:
        return []
    s = strength
    if preset == "natural" and channels == 3:
        return [ColorJitter(0.8, 0.4 * s, 0.4 * s, 0.2 * s, 0.1 * s), Grayscale(0.2)]
    if preset == "medical":  # windowing, no colour ops
        return [WindowJitter(0.8, 0.1 * s, 1 + 0.25 * s)]
    if preset == "microscopy":
        stain = [StainJitter(0.8, 0.05 * s)] if channels == 3 else []
        return [*stain, IntensityJitter(0.8, 0.2 * s, 0.2 * s, per_band=channels != 3)]
    # satellite (and natural non-RGB): intensity only, one factor for all bands (no hue shift)
    return [IntensityJitter(0.8, 0.4 * s, 0.4 * s)]


def blur_kernel(size: int) -> int:
    """Odd, about a tenth of the crop as in DINO (23 px at 224)."""
    return max(3, (size // 10) | 1)


class BatchPhotometric:
    """The photometric ops of one kind of view, then normalisation.

    ``__call__(x, draws)``: x (B, C, H, W) uint8 or float, draws (B, `n_draws`) int32 from
    `draw` -> float32 (B, C, H, W), normalised with ``mean``/``std`` (in [0, 1] units)."""

    def __init__(
        self,
        ops: Sequence[BatchOp],
        channels: int,
        mean: Sequence[float],
        std: Sequence[float],
    ) -> None:
        self.ops = list(ops)
        self.sizes = [op.draws(channels) for op in self.ops]
        self.n_draws = sum(self.sizes)
        self.mean = torch.tensor([float(m) for m in mean]).reshape(1, -1, 1, 1)
        self.std = torch.tensor([float(s) for s in std]).reshape(1, -1, 1, 1)

    def __call__(self, x: Tensor, draws: Tensor) -> Tensor:
        u = uniforms(draws.to(x.device))
        if x.device.type not in SUBSET_DEVICES:
            return self._augment(x, u)
        # on the CPU, chunks of a few samples stay in cache (and temporaries small)
        out = torch.empty(x.shape, dtype=torch.float32)
        step = max(1, CPU_CHUNK_BYTES // max(1, 4 * x[0].numel()))
        for start in range(0, len(x), step):
            end = start + step
            self._augment(x[start:end], u[start:end], out=out[start:end])
        return out

    def _augment(self, x: Tensor, u: Tensor, out: Tensor | None = None) -> Tensor:
        unit = x.dtype == torch.uint8
        # a new float tensor that the ops may change in place
        x = x.to(torch.float32).div_(255.0) if unit else x.to(torch.float32, copy=True)
        start = 0
        for op, size in zip(self.ops, self.sizes, strict=True):
            x = op(x, u[:, start : start + size], unit)
            start += size
        mean, std = self.mean.to(x.device), self.std.to(x.device)
        return torch.sub(x, mean, out=out).div_(std)
