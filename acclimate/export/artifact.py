"""The export folder: timm's own layout (``config.json`` + ``model.safetensors``) so that stock
``timm.create_model("local-dir:DIR", pretrained=True, num_classes=0)`` loads it, plus acclimate's
metadata (``acclimate.json``), the resolved recipe, probes and a model card (``card``)."""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from timm.models import save_for_hf
from torch import nn

from acclimate.adapters.merge import merge_lora
from acclimate.errors import AcclimateError
from acclimate.eval.features import check_kind, features_of
from acclimate.eval.multilayer import uses_class_token
from acclimate.export.meta import META_FILE
from acclimate.fileio import write_json_atomic, write_text_atomic

log = logging.getLogger(__name__)

FORMAT_VERSION = 1


_write_json = write_json_atomic


def export_backbone(
    backbone: nn.Module,
    out_dir: str | Path,
    *,
    mean: list[float],
    std: list[float],
    image_size: int,
    recipe: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    source: str | None = None,
    bands: Sequence[str] | None = None,
    statistics: dict[str, Any] | None = None,
    clip: dict[str, Any] | None = None,
    features: str = "pooled",
    reader: dict[str, Any] | None = None,
    start_blend: float = 1.0,
) -> Path:
    """Write ``backbone`` (a timm model with ``num_classes=0``) as an export folder.

    The preprocessing (resize the short side to ``image_size``, centre-crop, normalise with
    ``mean``/``std`` in [0, 1] units) goes into timm's ``pretrained_cfg`` and ``acclimate.json``.
    ``bands`` (names of the input channels in order) and ``statistics`` (per-channel mean, std,
    min, max and percentiles of the training data, from ``acclimate.data.stats``) are recorded
    in ``acclimate.json`` with how the files were read (``reader``: ``ReadOptions.to_dict()``,
    band selection, window, slice axis, nodata fill). ``recipe`` is written as ``recipe.yaml``,
    a record only.
    ``clip`` (``data.clip``: {"percentiles", "low", "high"}) is recorded as ``clip``; values are
    clipped per channel to [low, high] before normalisation (``acclimate.load`` does it; timm's
    data config cannot express it). ``features`` (``eval.features``: ``pooled``, ``cls`` or
    ``last{k}``) is the kind that probes, ``acclimate evaluate``, ``acclimate.load`` and ONNX use
    by default; it is metadata only (timm loads the same weights whatever it is).
    ``start_blend``: the fraction of the adaptation the weights keep (`acclimate.export.blend`),
    recorded as ``start_blend``.
    """
    out = Path(out_dir)
    model = merge_lora(copy.deepcopy(backbone).cpu().eval())  # plain weights, timm's names
    model.to(memory_format=torch.contiguous_format)  # safetensors stores contiguous tensors
    if any("lora" in k.lower() for k in model.state_dict()):
        raise ValueError("the backbone still holds LoRA tensors; merge adapters before export")
    check_finite(model, source)
    channels = len(mean)
    feature_meta = _feature_metadata(model, features, channels, image_size)
    out.mkdir(parents=True, exist_ok=True)
    data_config = {
        "input_size": (channels, image_size, image_size),
        "mean": tuple(mean),
        "std": tuple(std),
        "crop_pct": 1.0,
        "crop_mode": "center",
        "interpolation": "bilinear",
    }
    save_for_hf(model, str(out), safe_serialization=True, data_config=data_config)
    meta = {
        "format_version": FORMAT_VERSION,
        "architecture": model.pretrained_cfg.get("architecture", type(model).__name__),
        "num_features": int(model.num_features),
        "channels": channels,
        "image_size": image_size,
        "mean": list(mean),
        "std": list(std),
        "preprocessing": "resize short side to image_size (bilinear, antialias), centre crop, "
        "scale to [0, 1], subtract mean, divide by std"
        if clip is None
        else "scale 8-bit to [0, 1], clip each channel to [clip.low, clip.high], resize short "
        "side to image_size (bilinear, antialias), centre crop, subtract mean, divide by std",
        "clip": clip,
        "start_blend": start_blend,
        **feature_meta,
        "source": source,
        "metrics": metrics or {},
        **_data_metadata(channels, bands, reader, statistics),
    }
    _write_json(out / META_FILE, meta)
    if recipe is not None:
        write_text_atomic(out / "recipe.yaml", OmegaConf.to_yaml(OmegaConf.create(recipe)))
    from acclimate.export.card import write_model_card  # the card reads this module's files

    write_model_card(out)
    log.info("exported %s to %s (%s features)", meta["architecture"], out, features)
    return out


def _feature_metadata(
    model: nn.Module, features: str, channels: int, image_size: int
) -> dict[str, Any]:
    """The kinds ``model`` gives, the one probes and evaluation use (``features``, checked to be
    one the model can give), its width, and whether ``last{k}`` takes CLS tokens."""
    check_kind(model, features)
    with torch.no_grad():
        x = torch.zeros(1, channels, image_size, image_size)
        dim = int(features_of(model, x, features).shape[1])
    return {
        "feature_kinds": ["pooled", "cls", "patch", "last{k}"]
        if hasattr(model, "blocks")
        else ["pooled", "patch", "last{k}"],
        "features": features,
        "feature_dim": dim,
        "class_token": uses_class_token(model),  # last{k}: CLS tokens, else pooled stage maps
    }


class ExportError(AcclimateError):
    """Weights that must not leave as an export."""


def check_finite(model: nn.Module, source: str | None = None) -> None:
    """Refuse weights holding NaN or infinity (a diverged run): nothing downstream could use
    them, and an export that loads fine but gives NaN features is worse than none."""
    bad = [
        k for k, t in model.state_dict().items() if t.is_floating_point() and not t.isfinite().all()
    ]
    if bad:
        raise ExportError(
            f"{source or 'the backbone'}: {len(bad)} weight tensor(s) hold NaN or inf (first: "
            f"{bad[0]}): the run diverged, nothing was exported; retrain with a lower optim.lr, "
            "trainer.precision=bf16-mixed (or 32-true) instead of 16-mixed, and "
            "trainer.gradient_clip_val=3.0"
        )


def _data_metadata(
    channels: int,
    bands: Sequence[str] | None,
    reader: dict[str, Any] | None,
    statistics: dict[str, Any] | None,
) -> dict[str, Any]:
    """Band names and order, reader settings and data statistics for ``acclimate.json``."""
    if bands is not None and len(bands) != channels:
        raise AcclimateError(f"{len(bands)} band names for {channels} input channels")
    return {
        "bands": None if bands is None else list(bands),
        "reader": reader or {},
        "statistics": statistics,
        "value_range": "8-bit images scaled to [0, 1]; other data as acclimate's readers return "
        "it (uint16 / 65535, DICOM windowed to [0, 1], float as stored)",
    }
