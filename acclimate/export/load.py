"""Using an export: ``acclimate.load(DIR)`` and resolving MODEL arguments of the CLI."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import safetensors
import timm
import torch
from PIL import Image
from torch import Tensor, nn

from acclimate.data.readers import DEFAULT_OPTIONS, ReadOptions, read_image
from acclimate.data.transforms import EvalTransform
from acclimate.errors import AcclimateError
from acclimate.eval.features import FeatureKind, features_of, kind_problem
from acclimate.eval.linear import LinearProbe
from acclimate.export.artifact import (
    META_FILE,
    ExportFileError,
    checkpoint_metadata,
    read_export_meta,
    read_json,
)
from acclimate.resume import latest_checkpoint

log = logging.getLogger(__name__)


@dataclass
class Extractor:
    """A frozen feature extractor with its preprocessing and linear probes.

    ``features`` and ``predict`` take image paths, PIL images, numpy arrays (H, W[, C]) uint8 or
    uint8 tensors (C, H, W) / (B, C, H, W); preprocessing is applied for you. Image files are
    read with ``options`` (band selection, window, slice axis: the export's ``reader``), and
    every input is clipped per channel to ``clip`` (the export's ``clip``: ``data.clip``'s
    bounds) before normalisation, as in training. ``feature_kind`` (the export's ``features``:
    ``pooled``, ``cls`` or ``last{k}``) is what ``features`` gives unless told otherwise.
    """

    model: nn.Module
    mean: list[float]
    std: list[float]
    image_size: int
    probes: dict[str, LinearProbe] = field(default_factory=dict)
    probe_info: dict[str, dict[str, Any]] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    options: ReadOptions = DEFAULT_OPTIONS
    clip: tuple[list[float], list[float]] | None = None
    feature_kind: FeatureKind = "pooled"

    def __post_init__(self) -> None:
        self.model.eval()
        self.transform = EvalTransform(self.image_size, self.mean, self.std, self.clip)

    @property
    def channels(self) -> int:
        return len(self.mean)

    def _to_tensor(self, image: Any) -> Tensor:
        if isinstance(image, (str, Path)):
            return read_image(image, self.channels, options=self.options)
        if isinstance(image, Image.Image):
            image = np.asarray(image.convert("L" if self.channels == 1 else "RGB"))
        if isinstance(image, np.ndarray):
            arr = image[..., None] if image.ndim == 2 else image
            return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))
        if isinstance(image, Tensor):
            return image
        raise TypeError(f"cannot read an image from {type(image).__name__}")

    def preprocess(self, images: Any) -> Tensor:
        """Images -> normalised batch (B, C, image_size, image_size)."""
        if isinstance(images, Tensor) and images.ndim == 4:
            items: Sequence[Any] = list(images)
        elif isinstance(images, (list, tuple)):
            items = images
        else:
            items = [images]
        return torch.stack([self.transform(self._to_tensor(x)) for x in items])

    @torch.no_grad()
    def features(self, images: Any, kind: FeatureKind | None = None) -> Tensor:
        """(B, D) pooled, CLS or ``last{k}`` features (default: the export's ``feature_kind``),
        or (B, N, D) patch features."""
        x = self.preprocess(images).to(next(self.model.parameters()).device)
        return features_of(self.model, x, kind or self.feature_kind).float().cpu()

    @torch.no_grad()
    def predict(self, images: Any, probe: str | None = None) -> tuple[list[str], Tensor]:
        """Class names and probabilities (B, C) from a saved linear probe."""
        if not self.probes:
            raise AcclimateError(
                "this export has no probes; train one with `acclimate probe DIR --data SRC`"
            )
        name = probe or next(iter(self.probes))
        if name not in self.probes:
            raise AcclimateError(f"no probe {name!r}; available: {', '.join(self.probes)}")
        p = self.probes[name]
        kind = self.probe_info.get(name, {}).get("feature", "pooled")
        probs = p.logits(self.features(images, kind)).softmax(1)
        classes = p.classes or [str(i) for i in range(probs.shape[1])]
        return [classes[i] for i in probs.argmax(1).tolist()], probs


def load(path: str | Path, device: str | torch.device = "cpu") -> Extractor:
    """Load an export folder written by ``acclimate export``.

    ``config.json``, ``acclimate.json`` and the probes' JSON files are checked first: a file
    that was truncated or edited by hand gives one line naming the file and the key."""
    path = Path(path)
    if not (path / "config.json").is_file() or not (path / META_FILE).is_file():
        raise FileNotFoundError(
            f"{path}: not an acclimate export folder (needs config.json and {META_FILE}); "
            "make one with `acclimate export RUN --out DIR`"
        )
    arch = check_timm_config(path / "config.json")
    meta = read_export_meta(path)
    options = _meta_reader_options(meta, path / META_FILE)
    try:
        model = timm.create_model(f"local-dir:{path.resolve()}", pretrained=True, num_classes=0)
    except (RuntimeError, KeyError, TypeError, ValueError, AssertionError) as e:
        detail = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise ExportFileError(
            f"{path}: config.json and model.safetensors do not make a {arch} ({detail}); "
            "the folder was altered: export again"
        ) from None
    probes, info = {}, {}
    for pj in sorted((path / "probes").glob("*.json")) if (path / "probes").exists() else []:
        data = read_json(pj)
        classes = data.get("classes")
        if classes is not None and not (
            isinstance(classes, list) and all(isinstance(c, str) for c in classes)
        ):
            raise ExportFileError(f"{pj}: classes: expected a list of names, got {classes!r}")
        if kind_problem(data.get("feature", "pooled")):
            raise ExportFileError(f"{pj}: feature: {kind_problem(data['feature'])}")
        try:
            probes[pj.stem] = LinearProbe.load(pj.with_suffix(".safetensors"), classes)
        except (OSError, KeyError, safetensors.SafetensorError) as e:
            raise ExportFileError(
                f"{pj.with_suffix('.safetensors')}: not a readable probe ({type(e).__name__}: "
                f"{e}); train it again with `acclimate probe`"
            ) from None
        info[pj.stem] = data
    return Extractor(
        model.to(device),
        meta["mean"],
        meta["std"],
        int(meta["image_size"]),
        probes,
        info,
        meta,
        options,
        clip_bounds(meta),
        meta.get("features", "pooled"),
    )


def check_timm_config(path: Path) -> str:
    """Check the keys of an export's ``config.json`` that timm reads; return the architecture."""
    cfg = read_json(path)
    arch = cfg.get("architecture")
    if not isinstance(arch, str) or not timm.is_model(arch):
        raise ExportFileError(f"{path}: architecture: expected a timm model name, got {arch!r}")
    for key in ("pretrained_cfg", "model_args"):
        if key in cfg and not isinstance(cfg[key], dict):
            raise ExportFileError(f"{path}: {key}: expected a mapping, got {cfg[key]!r}")
    size = (cfg.get("pretrained_cfg") or {}).get("input_size")
    if size is not None and not (
        isinstance(size, list) and len(size) == 3 and all(isinstance(v, int) for v in size)
    ):
        raise ExportFileError(
            f"{path}: pretrained_cfg.input_size: expected [channels, height, width], got {size!r}"
        )
    return arch


def _meta_reader_options(meta: dict[str, Any], path: Path) -> ReadOptions:
    try:
        return reader_options(meta)
    except (TypeError, ValueError, AttributeError) as e:
        raise ExportFileError(f"{path}: reader: {e}; restore the file or export again") from None


def clip_bounds(meta: dict[str, Any]) -> tuple[list[float], list[float]] | None:
    """Per-channel (low, high) clipping bounds of an export's or checkpoint's ``clip``."""
    clip = meta.get("clip")
    if not clip:
        return None
    return [float(v) for v in clip["low"]], [float(v) for v in clip["high"]]


def reader_options(meta: dict[str, Any]) -> ReadOptions:
    """How the training images were read, from an export's ``acclimate.json`` (``reader``) or a
    checkpoint's metadata (``reader``, else the recipe's ``data`` keys)."""
    if meta.get("reader") is not None:
        return ReadOptions.from_dict(meta["reader"])
    return ReadOptions.from_dict((meta.get("recipe") or {}).get("data"))


@dataclass
class ResolvedModel:
    """A backbone plus the preprocessing it expects, from any MODEL argument."""

    model: nn.Module
    mean: list[float]
    std: list[float]
    image_size: int
    description: str
    metadata: dict[str, Any] = field(default_factory=dict)
    options: ReadOptions = DEFAULT_OPTIONS  # how to read image files for this model
    clip: tuple[list[float], list[float]] | None = None  # per-channel bounds before normalising
    features: str | None = None  # the feature kind the export or run records (eval.features)


def resolve_model(
    spec: str,
    weights: str | None = None,
    image_size: int | None = None,
    in_chans: int = 3,
    which: str = "teacher",
) -> ResolvedModel:
    """MODEL is an export folder, a run folder, a ``.ckpt`` of ours, or a timm name (+ weights).

    For a timm name the preprocessing is the weights' own (``pretrained_cfg``, usually ImageNet
    statistics) at ``image_size`` (default 224).
    """
    from acclimate.adapters import AdapterSettings, load_adapted_backbone
    from acclimate.backbones import create_backbone

    p = Path(spec)
    if p.is_dir() and (p / META_FILE).is_file():
        ex = load(p)
        return ResolvedModel(
            ex.model,
            ex.mean,
            ex.std,
            image_size or ex.image_size,
            f"export {p}",
            ex.meta,
            ex.options,
            ex.clip,
            ex.feature_kind,
        )
    if p.is_dir() and latest_checkpoint(p) is not None:  # a run folder: its newest checkpoint
        p = latest_checkpoint(p)  # type: ignore[assignment]
    if p.is_file() and p.suffix == ".ckpt":
        meta = checkpoint_metadata(p)
        b = meta["recipe"]["backbone"]
        if AdapterSettings(**meta["recipe"].get("adapter") or {}).active:
            model = load_adapted_backbone(p, prefer=which)  # base + adapter, LoRA merged
        else:
            model = create_backbone(b["name"], weights=str(p), in_chans=b["in_chans"], prefer=which)
        return ResolvedModel(
            model,
            meta["mean"],
            meta["std"],
            image_size or meta["image_size"],
            f"checkpoint {p} ({which})",
            meta,
            reader_options(meta),
            clip_bounds(meta),
            recipe_features(meta["recipe"]),
        )
    if p.is_dir() and (p / "recipe.yaml").is_file():
        raise AcclimateError(
            f"{spec}: a run folder without any checkpoint (it stopped before writing its first "
            "one: see its train.log); train it again, or set trainer.checkpoint_every_n_steps"
        )
    if p.exists():
        raise AcclimateError(
            f"{spec}: expected an export folder, a run folder or a .ckpt checkpoint; for a weights "
            "file pass the timm name as MODEL and the file with --weights"
        )
    model = create_backbone(spec, weights=weights, in_chans=in_chans)
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    mean, std = list(cfg.get("mean", (0.5,) * in_chans)), list(cfg.get("std", (0.5,) * in_chans))
    if len(mean) != in_chans:
        mean, std = [float(np.mean(mean))] * in_chans, [float(np.mean(std))] * in_chans
    return ResolvedModel(model, mean, std, image_size or 224, f"{spec} (weights: {weights})")


def recipe_features(recipe: dict[str, Any]) -> str | None:
    """The feature kind (``eval.features``) of a run's recipe, None when it names none."""
    section = recipe.get("eval")
    kind = section.get("features") if isinstance(section, dict) else None
    return kind if isinstance(kind, str) else None


def recorded_features(spec: str) -> str | None:
    """The feature kind that MODEL ``spec`` records, without building it: an export's
    ``features``, a run's or checkpoint's ``eval.features``; None for a timm name."""
    p = Path(spec)
    if p.is_dir() and (p / META_FILE).is_file():
        return read_export_meta(p).get("features", "pooled")
    if p.is_dir() and latest_checkpoint(p) is not None:
        p = latest_checkpoint(p)  # type: ignore[assignment]
    if p.is_file() and p.suffix == ".ckpt":
        return recipe_features(checkpoint_metadata(p)["recipe"])
    return None
