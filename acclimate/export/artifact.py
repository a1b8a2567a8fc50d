"""The export folder: timm's own layout (``config.json`` + ``model.safetensors``) so that stock
``timm.create_model("local-dir:DIR", pretrained=True, num_classes=0)`` loads it, plus acclimate's
metadata, the resolved recipe, probes and a model card."""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from timm.models import save_for_hf
from torch import nn

from acclimate.adapters.merge import merge_lora
from acclimate.errors import AcclimateError
from acclimate.fileio import write_json_atomic, write_text_atomic

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
) -> Path:
    """Write ``backbone`` (a timm model with ``num_classes=0``) as an export folder.

    The preprocessing (resize the short side to ``image_size``, centre-crop, normalise with
    ``mean``/``std`` in [0, 1] units) goes into timm's ``pretrained_cfg`` and ``acclimate.json``.
    ``bands`` (names of the input channels in order) and ``statistics`` (per-channel mean, std,
    min, max and percentiles of the training data, from ``acclimate.data.stats``) are recorded
    in ``acclimate.json`` with how the files were read (band selection, window, slice axis).
    ``clip`` (``data.clip``: {"percentiles", "low", "high"}) is recorded as ``clip``; values are
    clipped per channel to [low, high] before normalisation (``acclimate.load`` does it; timm's
    data config cannot express it).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = merge_lora(copy.deepcopy(backbone).cpu().eval())  # plain weights, timm's names
    if any("lora" in k.lower() for k in model.state_dict()):
        raise ValueError("the backbone still holds LoRA tensors; merge adapters before export")
    channels = len(mean)
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
        "feature_kinds": ["pooled", "cls", "patch"]
        if hasattr(model, "blocks")
        else ["pooled", "patch"],
        "source": source,
        "metrics": metrics or {},
        **_data_metadata(channels, recipe, bands, statistics),
    }
    _write_json(out / META_FILE, meta)
    if recipe is not None:
        write_text_atomic(out / "recipe.yaml", OmegaConf.to_yaml(OmegaConf.create(recipe)))
    write_model_card(out)
    log.info("exported %s to %s", meta["architecture"], out)
    return out


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
    reader = {k: data.get(k) for k in ("bands", "band_names", "window", "slice_axis") if k in data}
    return {
        "bands": bands,
        "reader": reader,
        "statistics": statistics,
        "value_range": "8-bit images scaled to [0, 1]; other data as acclimate's readers return "
        "it (uint16 / 65535, DICOM windowed to [0, 1], float as stored)",
    }


def _fmt(x: Any) -> str:
    return f"{x:.4f}" if isinstance(x, float) else str(x)


def _evaluation_lines(ev: dict[str, Any]) -> list[str]:
    """The headline numbers stored by ``acclimate evaluate`` (first model = reference)."""
    models: dict[str, dict[str, float]] = ev["models"]
    keys = list(dict.fromkeys(k for h in models.values() for k in h))
    this = ev.get("this")
    return [
        "## Evaluation report (frozen features, same protocol for every model)",
        "",
        f"Data: `{ev.get('data')}`"
        + (
            f"; source-domain forgetting check: `{ev['forgetting_data']}`"
            if ev.get("forgetting_data")
            else ""
        )
        + f". Full report: `{ev.get('report')}`.",
        "",
        "| model | " + " | ".join(keys) + " |",
        "|---|" + "---|" * len(keys),
        *(
            f"| {'**this export**' if spec == this else f'`{spec}`'} | "
            + " | ".join(_fmt(h.get(k, "")) for k in keys)
            + " |"
            for spec, h in models.items()
        ),
        "",
    ]


def _onnx_lines(onnx: dict[str, Any]) -> list[str]:
    return [
        "## ONNX",
        "",
        f"`{onnx['file']}`: input `{onnx['input']}` float32 {onnx['input_shape']} (dynamic batch), "
        f"already preprocessed as above (resize, centre crop, [0, 1], mean/std); output "
        f"`{onnx['output']}` {onnx['output_shape']}, the pooled features. Max abs difference "
        f"to PyTorch: {onnx.get('max_abs_diff', 'not checked')}.",
        "",
    ]


def write_model_card(out: str | Path) -> Path:
    """(Re)write ``README.md`` from ``acclimate.json``, the recipe and the probes."""
    out = Path(out)
    meta = json.loads((out / META_FILE).read_text())
    recipe = (
        OmegaConf.to_container(OmegaConf.load(out / "recipe.yaml"))
        if (out / "recipe.yaml").exists()
        else {}
    )
    lines = [f"# {meta['architecture']} adapted with acclimate", ""]
    if recipe:
        b, d, m = recipe.get("backbone", {}), recipe.get("data", {}), recipe.get("method", {})
        lines += [
            f"- Starting backbone: `{b.get('name')}` with weights `{b.get('weights')}`",
            f"- Method: {m.get('name')}; training data: `{d.get('train')}`",
        ]
    lines += [
        f"- Input: {meta['channels']} channel(s), {meta['image_size']} px; {meta['preprocessing']}",
        f"- mean {meta['mean']}, std {meta['std']}",
        *([f"- Bands, in input order: {', '.join(meta['bands'])}"] if meta.get("bands") else []),
        "",
    ]
    m = meta.get("metrics") or {}
    if m.get("before") and m.get("after"):
        lines += [
            "## Before / after adaptation (frozen features, same protocol)",
            "",
            "| model | linear probe top-1 | kNN top-1 (k=20) | test images |",
            "|---|---|---|---|",
            *(
                f"| {label} | {_fmt(r['linear_top1'])} | {_fmt(r['knn_top1'])} | {r['n_test']} |"
                for label, r in (("starting backbone", m["before"]), ("adapted", m["after"]))
            ),
            "",
        ]
    if (meta.get("evaluation") or {}).get("models"):
        lines += _evaluation_lines(meta["evaluation"])
    if meta.get("onnx"):
        lines += _onnx_lines(meta["onnx"])
    probes = sorted((out / "probes").glob("*.json")) if (out / "probes").exists() else []
    if probes:
        lines += [
            "## Linear probes",
            "",
            "| probe | classes | test top-1 | data |",
            "|---|---|---|---|",
        ]
        for p in probes:
            info = json.loads(p.read_text())
            lines.append(
                f"| {p.stem} | {len(info.get('classes', []))} | "
                f"{_fmt(info.get('metrics', {}).get('linear_top1'))} | `{info.get('data')}` |"
            )
        lines.append("")
    lines += [
        "## Use",
        "",
        "```python",
        "import timm  # no acclimate needed",
        f'model = timm.create_model("local-dir:{out.name}", pretrained=True, num_classes=0)',
        "",
        "import acclimate  # preprocessing, CLS/pooled/patch features and probe predictions",
        f'extractor = acclimate.load("{out.name}")',
        "```",
        "",
    ]
    write_text_atomic(out / "README.md", "\n".join(lines))
    return out / "README.md"


def checkpoint_metadata(ckpt: str | Path) -> dict[str, Any]:
    """The run metadata stored by acclimate in a Lightning checkpoint (weights_only load)."""
    obj = torch.load(ckpt, map_location="cpu", weights_only=True)
    meta = obj.get("acclimate") if isinstance(obj, dict) else None
    if not meta:
        raise AcclimateError(
            f"{ckpt}: not an acclimate training checkpoint (no 'acclimate' metadata)"
        )
    return meta
