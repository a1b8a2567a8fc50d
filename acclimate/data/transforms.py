"""Augmentations on (C, H, W) tensors with any channel count, uint8 or float32: DINO multi-crop
views with domain presets, and the deterministic eval transform.

uint8 images (8-bit data) are scaled to [0, 1] before normalisation; float32 images (16-bit,
DICOM, NIfTI, ...) are used as the readers return them (``readers.py``). The ``natural`` preset
on RGB keeps torchvision's colour jitter on uint8; every other preset uses the float ops of
``sample_ops.py``, which work on any number of bands.

``augment.device`` chooses where the photometric ops run: ``per_sample`` (every op on each
image in the loader, the original path), or per batch as vectorised ops (`batch_augment`) after
collation, ``cpu`` in the loader or ``auto`` on the accelerator after the transfer (in the
loader when training on the CPU); then only crops, flips and rotations run per image.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torchvision.transforms import v2

from acclimate.data import batch_augment as ba
from acclimate.data.batch_augment import BatchPhotometric
from acclimate.data.sample_ops import (
    IntensityJitter,
    RandomRot90,
    RandomSolarize,
    StainJitter,
    WindowJitter,
    to_unit_float,
)
from acclimate.data.views import ViewGeometry

Preset = Literal["natural", "satellite", "medical", "microscopy"]
AugmentDevice = Literal["per_sample", "cpu", "auto"]
DEVICES = ("per_sample", "cpu", "auto")


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


def _per_sample(op: ba.BatchOp) -> nn.Module:
    """The per-sample module of one of `batch_augment.preset_ops`' ops."""
    if isinstance(op, ba.ColorJitter):
        jitter = v2.ColorJitter(op.brightness, op.contrast, op.saturation, op.hue)
        return v2.RandomApply([jitter], p=op.p)
    if isinstance(op, ba.Grayscale):
        return v2.RandomGrayscale(p=op.p)
    if isinstance(op, ba.WindowJitter):
        return v2.RandomApply([WindowJitter(op.shift, op.scale)], p=op.p)
    if isinstance(op, ba.StainJitter):
        return v2.RandomApply([StainJitter(op.sigma)], p=op.p)
    if isinstance(op, ba.IntensityJitter):
        jitter = IntensityJitter(op.brightness, op.contrast, per_band=op.per_band)
        return v2.RandomApply([jitter], p=op.p)
    raise TypeError(f"no per-sample op for {op!r}")


def _photometric(preset: Preset, channels: int, strength: float) -> list[nn.Module]:
    """Colour/intensity jitter for a preset (`batch_augment.preset_ops`), per sample."""
    return [_per_sample(op) for op in ba.preset_ops(preset, channels, strength)]


def _flips(preset: Preset) -> str:
    if preset in ("satellite", "microscopy"):  # overhead / slide images: no canonical orientation
        return "all"
    if preset == "medical":  # left/right often carries meaning (situs): no flips by default
        return "none"
    return "horizontal"


def _geometric(preset: Preset) -> list[nn.Module]:
    flips = _flips(preset)
    if flips == "all":
        return [v2.RandomHorizontalFlip(), v2.RandomVerticalFlip(), RandomRot90()]
    return [v2.RandomHorizontalFlip()] if flips == "horizontal" else []


# Satellite crops (``preset: satellite``): overhead imagery has a fixed ground sampling distance
# (10 m per pixel for Sentinel-2's visible bands), so objects have a known size in pixels. Crops
# keep the aspect ratio (square) and the zoom moderate: a global crop covers 25-100% of the tile
# (side 50-100%, at most 2x zoom), a local crop 10-40% (side 32-63%). These are the preset's
# defaults for ``global_scale``/``local_scale``; values set in a recipe are used as given.
SATELLITE_GLOBAL_SCALE = (0.25, 1.0)
SATELLITE_LOCAL_SCALE = (0.1, 0.4)


BLUR_SIGMA = (0.1, 2.0)  # DINO's Gaussian blur


def _blur(size: int, p: float) -> list[nn.Module]:
    if p <= 0:
        return []
    blur = v2.GaussianBlur(ba.blur_kernel(size), sigma=BLUR_SIGMA)
    return [v2.RandomApply([blur], p=p)]


def _to_float(mean: Sequence[float], std: Sequence[float]) -> list[nn.Module]:
    # ToDtype scales uint8 to [0, 1] and leaves float32 as it is
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]


class MultiCropTransform:
    """DINO multi-crop (Caron et al. 2021, Sec. 3.1): 2 global views and ``n_local`` local views.

    Input: an image tensor (C, H, W), uint8 or float32, any C. Output:
    ``{"global": [2 x (C, G, G)], "local": [n_local x (C, L, L)]}`` float tensors, normalised
    with ``mean``/``std``. The loader uses the two stages apart (`sample` per image, `batch`
    per batch) when ``device`` batches the photometric ops.

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
        device: where the photometric ops (colour/intensity jitter, grayscale, blur, solarise)
            run. ``auto``: per batch on the accelerator after the transfer (uint8 crops cross
            to it, 4x less than float), in the loader when training on the CPU; ``cpu``: per
            batch in the loader, after collation (in its worker processes when
            ``data.num_workers`` > 0); ``per_sample``: every op on each image in the loader
            (the original path, slower). The ops, probabilities and ranges are the same.
        albumentations: a pipeline saved with albumentations' ``A.save`` (.yaml or .json),
            applied to every view (HWC numpy, any channel count, uint8 or float as read) after
            the crop and flips, before the preset's colour ops and the normalisation; set
            ``color_strength: 0`` / ``blur_p: 0`` to use it instead of the preset's. Needs
            ``pip install 'acclimate[augment]'``.
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
        device: AugmentDevice = "auto",
        albumentations: str | None = None,
    ) -> None:
        satellite = preset == "satellite"
        if global_scale is None:
            global_scale = SATELLITE_GLOBAL_SCALE if satellite else (0.4, 1.0)
        if local_scale is None:
            local_scale = SATELLITE_LOCAL_SCALE if satellite else (0.05, 0.4)
        _check(global_scale, local_scale, n_local, channels, mean, std, device)
        g = global_size or 224
        self.global_size = g
        self.local_size = local_size or max(8, int(round(g * 96 / 224 / 8)) * 8)
        self.n_local = n_local
        self.device, self.batched = device, device != "per_sample"
        self.channels = channels
        user = None
        if albumentations is not None:
            from acclimate.data.user_augment import AlbumentationsView, load_pipeline

            user = AlbumentationsView(load_pipeline(albumentations), albumentations)
        # overhead imagery has a fixed ground sampling distance: square crops, no stretching
        ratio = (1.0, 1.0) if satellite else (3 / 4, 4 / 3)
        sol = solarize_p if preset == "natural" and channels == 3 else 0.0
        ls = self.local_size
        # (size, scale, blur probability, solarise probability) of global 1, global 2, local
        self._specs: list[ViewSpec] = [
            (g, tuple(global_scale), blur_p, 0.0),
            (g, tuple(global_scale), 0.1 * blur_p, sol),
            (ls, tuple(local_scale), 0.5 * blur_p, 0.0),
        ]
        norm, first = _to_float(mean, std), _clip(clip, channels)
        colour = _photometric(preset, channels, color_strength)
        around = (first, _geometric(preset), [user] if user is not None else [], colour, norm)
        self.global1, self.global2, self.local = (
            _per_sample_view(spec, ratio, *around) for spec in self._specs
        )
        ops = ba.preset_ops(preset, channels, color_strength)
        self._photo = [
            BatchPhotometric([*ops, *_batch_blur_solarize(size, bp, sp)], channels, mean, std)
            for size, _, bp, sp in self._specs
        ]
        before = first[0] if first else None
        self._geometry = [
            ViewGeometry(size, scale, ratio, _flips(preset), photo.n_draws, before, user)
            for (size, scale, _, _), photo in zip(self._specs, self._photo, strict=True)
        ]

    def __call__(self, image: Tensor) -> dict[str, list[Tensor]]:
        if self.batched:  # the two stages on a batch of one
            one = self.batch(_map_tensors(self.sample(image), lambda t: t.unsqueeze(0)))
            return {kind: [v[0] for v in views] for kind, views in one.items()}
        return {
            "global": [self.global1(image), self.global2(image)],
            "local": [self.local(image) for _ in range(self.n_local)],
        }

    def sample(self, image: Tensor) -> dict[str, Any]:
        """The per-image stage. Per sample: the finished views (as ``__call__``). Batched: the
        cropped, flipped views as read (uint8 or float) and under ``draws`` their photometric
        random numbers, ``{"global": [...], "local": [...], "draws": {"global": [(P,)],
        "local": [(P,)]}}``, all from torch's generator."""
        if not self.batched:
            return self(image)
        made = [self._geometry[0](image), self._geometry[1](image)]
        made += [self._geometry[2](image) for _ in range(self.n_local)]
        views, draws = [v for v, _ in made], [d for _, d in made]
        return {
            "global": views[:2],
            "local": views[2:],
            "draws": {"global": draws[:2], "local": draws[2:]},
        }

    def batch(self, views: dict[str, Any]) -> dict[str, list[Tensor]]:
        """The per-batch stage on collated `sample` output (views (B, C, h, w), draws (B, P))
        on any device: photometric ops with each sample's own factors, then normalisation ->
        ``{"global": [2 x (B, C, G, G)], "local": [n_local x (B, C, L, L)]}`` float32. Views
        without ``draws`` (the per-sample path's) are returned unchanged."""
        draws = views.get("draws")
        if draws is None:
            return views
        pairs = zip(self._photo[:2], views["global"], draws["global"], strict=True)
        out = {"global": [photo(x, d) for photo, x, d in pairs]}
        local = list(views["local"])
        if not local:
            return {**out, "local": []}
        # every local view has the same ops: one call on all of them
        done = self._photo[2](torch.cat(local), torch.cat(list(draws["local"])))
        return {**out, "local": list(done.split(len(local[0])))}


ViewSpec = tuple[int, tuple[float, float], float, float]  # size, scale, blur p, solarise p


def _per_sample_view(
    spec: ViewSpec,
    ratio: tuple[float, float],
    first: list[nn.Module],
    geo: list[nn.Module],
    user: list[Any],
    colour: list[nn.Module],
    norm: list[nn.Module],
) -> v2.Compose:
    """One view's per-sample pipeline (``device: per_sample``): clip, crop, flips, the user's
    albumentations pipeline, colour jitter, blur, solarise, normalisation."""
    size, scale, blur_p, solarize_p = spec
    crop = v2.RandomResizedCrop(size, scale=scale, ratio=ratio, antialias=True)
    solarize = [RandomSolarize(p=solarize_p)] if solarize_p > 0 else []
    return v2.Compose([*first, crop, *geo, *user, *colour, *_blur(size, blur_p), *solarize, *norm])


def _check(
    global_scale: tuple[float, float],
    local_scale: tuple[float, float],
    n_local: int,
    channels: int,
    mean: Sequence[float],
    std: Sequence[float],
    device: str,
) -> None:
    for name, (lo, hi) in (("global_scale", global_scale), ("local_scale", local_scale)):
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"{name} must satisfy 0 < min <= max <= 1, got {[lo, hi]}")
    if n_local < 0:
        raise ValueError(f"n_local must be >= 0, got {n_local}")
    if len(mean) != channels or len(std) != channels:
        raise ValueError(f"mean/std have {len(mean)} values but the images have {channels}")
    if device not in DEVICES:
        raise ValueError(
            f"device must be one of {', '.join(DEVICES)}, got {device!r} (auto: batched on "
            "the accelerator; cpu: batched in the loader; per_sample: each image on its own)"
        )


def _batch_blur_solarize(size: int, blur_p: float, solarize_p: float) -> list[ba.BatchOp]:
    ops: list[ba.BatchOp] = []
    if blur_p > 0:
        ops.append(ba.GaussianBlur(blur_p, ba.blur_kernel(size), BLUR_SIGMA))
    if solarize_p > 0:
        ops.append(ba.Solarize(solarize_p))
    return ops


def _map_tensors(tree: Any, fn: Any) -> Any:
    if isinstance(tree, Tensor):
        return fn(tree)
    if isinstance(tree, dict):
        return {k: _map_tensors(v, fn) for k, v in tree.items()}
    return [_map_tensors(v, fn) for v in tree]


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
