"""Using an export: ``acclimate.load(DIR)`` and resolving MODEL arguments of the CLI."""

from __future__ import annotations

import dataclasses
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
from acclimate.export.meta import META_FILE, ExportFileError, read_export_meta, read_json
from acclimate.preflight import load_checkpoint_file
from acclimate.resume import latest_checkpoint
from acclimate.run_info import RunInfo, read_run_info, recipe_record, run_info_of

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
    """How the training images were read, from an export's ``acclimate.json`` (``reader``)."""
    return ReadOptions.from_dict(meta.get("reader"))


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
    run_info: RunInfo | None = None  # a run or checkpoint: its run info
    recipe: dict[str, Any] | None = None  # a run or checkpoint: its resolved recipe, a record
    start: dict[str, Any] | None = None  # a run or checkpoint: its start's backbone: section
    trained: dict[str, Any] | None = None  # a checkpoint: its network, step, default network


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
        return _resolve_checkpoint(p, which, image_size)
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


def network_of(state_dict: dict[str, Any], which: str) -> str:
    """The network a checkpoint's backbone comes from for ``which``: its EMA teacher
    (``teacher_backbone.*``) when asked and present, else the backbone that trained (the only
    one of methods without an EMA teacher: distill's teacher is the frozen start, not it)."""
    if which == "teacher" and any(k.startswith("teacher_backbone.") for k in state_dict):
        return "EMA teacher"
    return "student"


def _resolve_checkpoint(path: Path, which: str, image_size: int | None) -> ResolvedModel:
    """A training checkpoint's backbone (``which`` network) and preprocessing, from its
    `RunInfo`."""
    from acclimate.backbones import create_backbone

    ckpt = load_checkpoint_file(path)
    info = run_info_of(ckpt, path)
    default = network_of(ckpt["state_dict"], "teacher")  # what a plain export holds
    network = default if which == "teacher" else "student"
    if info.adapter.active:  # base + adapter, LoRA merged
        model = _adapted_backbone(ckpt, info, path, which)
    else:
        b = info.backbone
        model = create_backbone(b.name, weights=str(path), in_chans=b.in_chans, prefer=which)
    return ResolvedModel(
        model,
        list(info.mean),
        list(info.std),
        image_size or info.image_size,
        f"checkpoint {path} ({network})",
        info.to_dict(),
        info.reader,
        None if info.clip is None else info.clip.bounds,
        info.features,
        info,
        recipe_record(ckpt),
        start_section(ckpt, info),
        {
            "network": network,
            "step": int(ckpt.get("global_step", -1)),
            "default": default,
        },
    )


def load_adapted_backbone(path: str | Path, prefer: str = "teacher") -> nn.Module:
    """Rebuild the backbone of a training checkpoint made with an ``adapter:`` section, merged.

    The base model comes from the checkpoint's `RunInfo` (its weights from the base-weights
    reference when the checkpoint has one), the adapter is applied again, the checkpoint's
    backbone tensors are loaded over it (``teacher_backbone.`` or ``backbone.``, after
    ``prefer``), and LoRA is merged: the result is a plain timm model.
    """
    ckpt = load_checkpoint_file(path)
    return _adapted_backbone(ckpt, run_info_of(ckpt, path), Path(path), prefer)


def start_section(ckpt: dict[str, Any], info: RunInfo) -> dict[str, Any]:
    """The ``backbone:`` arguments that rebuild the start a checkpoint was trained from (an
    adapted run's base-weights reference when it has one)."""
    from acclimate.adapters import CKPT_KEY

    section = dataclasses.asdict(info.backbone)
    base = (ckpt.get(CKPT_KEY) or {}).get("base")
    if base:
        section.update({k: base[k] for k in section if k in base})
    return section


def _adapted_backbone(ckpt: dict[str, Any], info: RunInfo, path: Path, prefer: str) -> nn.Module:
    from acclimate.adapters import ADAPTER_ATTR, CKPT_KEY, apply_adapter, fingerprint, merge_lora
    from acclimate.adapters.checkpoint import same_fingerprint
    from acclimate.backbones import BackboneError, create_backbone

    adapter = ckpt.get(CKPT_KEY) or {}
    section = start_section(ckpt, info)
    model = create_backbone(**section)
    apply_adapter(model, info.adapter)
    order = ("teacher_backbone.", "backbone.") if prefer == "teacher" else ("backbone.",)
    sd = ckpt["state_dict"]
    prefix = next((p for p in order if any(k.startswith(p) for k in sd)), None)
    if prefix is None:
        raise BackboneError(f"{path}: no {' or '.join(order)}* tensors in its state_dict")
    own = {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
    dropped = {k[len(prefix) :] for k in adapter.get("dropped", []) if k.startswith(prefix)}
    if dropped:
        frozen = getattr(model, ADAPTER_ATTR)["frozen"]
        if not same_fingerprint(adapter["base"]["fingerprint"], fingerprint(model, frozen)):
            raise BackboneError(
                f"{path} holds only adapter tensors, and its base weights "
                f"{section.get('weights')} are not the ones it was trained from"
            )
    missing, unexpected = model.load_state_dict(own, strict=False)
    missing = [k for k in missing if k not in dropped]
    if missing or unexpected:
        raise BackboneError(
            f"{path}: {prefix}* does not fit {section['name']} with its adapter: missing "
            f"{missing[:3]}, unexpected {unexpected[:3]}"
        )
    return merge_lora(model).eval()


def recorded_features(spec: str) -> str | None:
    """The feature kind that MODEL ``spec`` records, without building it: an export's
    ``features``, a run's or checkpoint's ``eval.features``; None for a timm name."""
    p = Path(spec)
    if p.is_dir() and (p / META_FILE).is_file():
        return read_export_meta(p).get("features", "pooled")
    if p.is_dir() and latest_checkpoint(p) is not None:
        p = latest_checkpoint(p)  # type: ignore[assignment]
    if p.is_file() and p.suffix == ".ckpt":
        return read_run_info(p).features
    return None
