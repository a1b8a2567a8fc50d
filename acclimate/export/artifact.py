"""The export folder: timm's own layout (``config.json`` + ``model.safetensors``) so that stock
``timm.create_model("local-dir:DIR", pretrained=True, num_classes=0)`` loads it, plus acclimate's
metadata (``acclimate.json``), the resolved recipe, probes and a model card (``card``)."""

from __future__ import annotations

import copy
import json
import logging
import math
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from timm.models import save_for_hf
from torch import nn

from acclimate.adapters.merge import merge_lora
from acclimate.errors import AcclimateError
from acclimate.eval.features import check_kind, features_of, kind_problem
from acclimate.eval.multilayer import uses_class_token
from acclimate.fileio import write_json_atomic, write_text_atomic
from acclimate.preflight import CheckpointError, load_checkpoint_file

log = logging.getLogger(__name__)

META_FILE = "acclimate.json"
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
    bands: list[str] | None = None,
    statistics: dict[str, Any] | None = None,
    clip: dict[str, Any] | None = None,
    features: str = "pooled",
) -> Path:
    """Write ``backbone`` (a timm model with ``num_classes=0``) as an export folder.

    The preprocessing (resize the short side to ``image_size``, centre-crop, normalise with
    ``mean``/``std`` in [0, 1] units) goes into timm's ``pretrained_cfg`` and ``acclimate.json``.
    ``bands`` (names of the input channels in order) and ``statistics`` (per-channel mean, std,
    min, max and percentiles of the training data, from ``acclimate.data.stats``) are recorded
    in ``acclimate.json`` with how the files were read (band selection, window, slice axis).
    ``clip`` (``data.clip``: {"percentiles", "low", "high"}) is recorded as ``clip``; values are
    clipped per channel to [low, high] before normalisation (``acclimate.load`` does it; timm's
    data config cannot express it). ``features`` (``eval.features``: ``pooled``, ``cls`` or
    ``last{k}``) is the kind that probes, ``acclimate evaluate``, ``acclimate.load`` and ONNX use
    by default; it is metadata only (timm loads the same weights whatever it is).
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
        **feature_meta,
        "source": source,
        "metrics": metrics or {},
        **_data_metadata(channels, recipe, bands, statistics),
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


class ExportFileError(AcclimateError):
    """An export folder's (or a run's) JSON file that is unreadable or was altered."""


def read_json(path: str | Path) -> dict[str, Any]:
    """A JSON object from ``path``; invalid JSON or another top-level type is one line naming
    the file (the usual cause: it was edited by hand)."""
    path = Path(path)
    try:
        obj = json.loads(path.read_text())
    except UnicodeDecodeError:
        raise ExportFileError(f"{path}: not a text file; it must hold JSON") from None
    except json.JSONDecodeError as e:
        raise ExportFileError(
            f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}); restore it or "
            "export again"
        ) from None
    if not isinstance(obj, dict):
        raise ExportFileError(f"{path}: expected a JSON object, got {type(obj).__name__}")
    return obj


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
    recipe: dict[str, Any] | None,
    bands: list[str] | None,
    statistics: dict[str, Any] | None,
) -> dict[str, Any]:
    """Band names and order, reader settings and data statistics for ``acclimate.json``."""
    data = (recipe or {}).get("data") or {}
    if bands is None and data.get("bands") and all(isinstance(b, str) for b in data["bands"]):
        bands = list(data["bands"])
    if bands is not None and len(bands) != channels:
        raise AcclimateError(f"{len(bands)} band names for {channels} input channels")
    keys = ("bands", "band_names", "window", "slice_axis", "nodata", "nodata_fill", "max_pixels")
    reader = {k: data.get(k) for k in keys if k in data}
    if reader.get("nodata_fill") == "mean" and isinstance(data.get("mean"), list):
        reader["nodata_fill"] = data["mean"]  # as training filled: the normalisation mean
    return {
        "bands": bands,
        "reader": reader,
        "statistics": statistics,
        "value_range": "8-bit images scaled to [0, 1]; other data as acclimate's readers return "
        "it (uint16 / 65535, DICOM windowed to [0, 1], float as stored)",
    }


def read_export_meta(out: str | Path) -> dict[str, Any]:
    """An export folder's ``acclimate.json``, checked: a hand-edited or truncated file gives one
    line naming the file and the key, not a KeyError later on."""
    path = Path(out) / META_FILE
    meta = read_json(path)
    problem = export_meta_problem(meta)
    if problem:
        raise ExportFileError(f"{path}: {problem}; restore the file or export again")
    return meta


def export_meta_problem(meta: dict[str, Any]) -> str | None:
    """What is wrong with the keys of an export's ``acclimate.json``, or None."""
    if not isinstance(meta.get("architecture"), str):
        return f"architecture: expected a timm model name, got {meta.get('architecture')!r}"
    channels = meta.get("channels")
    if not isinstance(channels, int) or isinstance(channels, bool) or channels < 1:
        return f"channels: expected an integer >= 1, got {channels!r}"
    problem = preprocessing_problem(meta, channels)
    if problem:
        return problem
    if not isinstance(meta.get("preprocessing"), str):
        return f"preprocessing: expected a description, got {meta.get('preprocessing')!r}"
    bands = meta.get("bands")
    if bands is not None and (
        not isinstance(bands, list)
        or len(bands) != channels
        or not all(isinstance(b, str) for b in bands)
    ):
        return f"bands: expected null or {channels} band names, got {bands!r}"
    for key in ("metrics", "evaluation", "onnx"):
        if meta.get(key) is not None and not isinstance(meta[key], dict):
            return f"{key}: expected a mapping or null, got {meta[key]!r}"
    if "features" in meta and kind_problem(meta["features"]):  # absent: an older export, pooled
        return f"features: {kind_problem(meta['features'])}"
    return None


def checkpoint_metadata(ckpt: str | Path) -> dict[str, Any]:
    """The run metadata stored by acclimate in a Lightning checkpoint (weights_only load), with
    the keys that loading the checkpoint's backbone needs checked (one line naming the key)."""
    meta = load_checkpoint_file(ckpt)["acclimate"]
    problem = _checkpoint_meta_problem(meta)
    if problem:
        raise CheckpointError(f"{ckpt}: acclimate metadata: {problem}; the file was altered")
    return meta


def _checkpoint_meta_problem(meta: Any) -> str | None:
    if not isinstance(meta, dict):
        return f"expected a mapping, got {type(meta).__name__}"
    recipe = meta.get("recipe")
    if not isinstance(recipe, dict) or not isinstance(recipe.get("backbone"), dict):
        return "recipe.backbone is missing"
    b = recipe["backbone"]
    if not isinstance(b.get("name"), str) or not isinstance(b.get("in_chans"), int):
        return "recipe.backbone needs a name (str) and in_chans (int)"
    if not isinstance(recipe.get("adapter") or {}, dict):
        return "recipe.adapter must be a mapping"
    return preprocessing_problem(meta)


def preprocessing_problem(meta: dict[str, Any], channels: int | None = None) -> str | None:
    """What is wrong with the preprocessing keys of a checkpoint's metadata or an export's
    ``acclimate.json`` (``mean``, ``std``, ``image_size``, ``clip``, ``reader``), or None."""
    mean, std = meta.get("mean"), meta.get("std")
    for key, value in (("mean", mean), ("std", std)):
        if not isinstance(value, list) or not value or not all(_is_number(v) for v in value):
            return f"{key}: expected a list of numbers, got {value!r}"
    if len(std) != len(mean) or (channels is not None and len(mean) != channels):
        return f"mean and std must have one value per channel, got {mean!r} and {std!r}"
    if not all(v > 0 for v in std):
        return f"std: every value must be > 0, got {std!r}"
    size = meta.get("image_size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        return f"image_size: expected an integer >= 1, got {size!r}"
    clip = meta.get("clip")
    if clip is not None:
        ok = isinstance(clip, dict) and all(
            isinstance(clip.get(k), list)
            and len(clip[k]) == len(mean)
            and all(_is_number(v) for v in clip[k])
            for k in ("low", "high")
        )
        if not ok:
            return f"clip: expected {{low: [...], high: [...]}}, a bound per channel, got {clip!r}"
    for key in ("reader", "statistics"):
        if meta.get(key) is not None and not isinstance(meta[key], dict):
            return f"{key}: expected a mapping or null, got {meta[key]!r}"
    return None


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
