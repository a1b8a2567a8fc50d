"""What a checkpoint says about its run: `RunInfo`, one typed record that training writes into
every checkpoint and that export, MODEL resolution (evaluate, embed), ``load_adapted_backbone``
and resume read, so that none of them re-parses the recipe.

A checkpoint holds it under ``"acclimate"`` (``RunInfo.to_dict()``: plain types, with a
``version``) and the resolved recipe under ``"acclimate_recipe"``, a record only: export copies
it into ``recipe.yaml``; resume reads the run folder's own ``recipe.yaml``. Checkpoints written
before run info existed hold ``{"recipe": ..., "mean": ..., ...}`` under ``"acclimate"``;
`RunInfo.from_dict` reads them too (`_from_recipe_entry`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from acclimate.adapters.config import AdapterSettings
from acclimate.data.readers import DEFAULT_OPTIONS, ReadOptions
from acclimate.errors import AcclimateError
from acclimate.eval.features import kind_problem
from acclimate.preflight import CheckpointError, load_checkpoint_file

INFO_KEY = "acclimate"
RECIPE_KEY = "acclimate_recipe"
VERSION = 1


@dataclass(frozen=True)
class BackboneRef:
    """The starting backbone as ``acclimate.backbones.create_backbone`` takes it (the recipe's
    ``backbone:`` section): timm name, weights reference (``hub``, ``package:...``, a file, or
    None), input channels, drop-path rate and which network a training checkpoint gives."""

    name: str
    weights: str | None = None
    in_chans: int = 3
    drop_path_rate: float = 0.0
    prefer: Literal["teacher", "student"] = "teacher"


@dataclass(frozen=True)
class Clip:
    """``data.clip``: the percentiles asked for and the per-channel bounds they gave on the
    training data; values are clipped to [low, high] before normalisation."""

    percentiles: tuple[float, float]
    low: tuple[float, ...]
    high: tuple[float, ...]

    @property
    def bounds(self) -> tuple[list[float], list[float]]:
        return list(self.low), list(self.high)

    def to_dict(self) -> dict[str, Any]:
        return {
            "percentiles": list(self.percentiles),
            "low": list(self.low),
            "high": list(self.high),
        }


@dataclass(frozen=True)
class RunInfo:
    """Everything about a run that the users of its checkpoints need.

    Args:
        backbone: the starting backbone (rebuilt for adapted checkpoints, whose base tensors may
            be left out: ``adapter.save_base: false``).
        adapter: the ``adapter:`` settings (LoRA, unfrozen blocks) to apply again before loading.
        method: the method's name (``dino``, ``mae``, ...).
        features: ``eval.features``: the feature kind of the before/after and the default of
            probes, evaluate, embed, ONNX and ``acclimate.load``.
        image_size: the side of the evaluation images (resize short side, centre crop).
        channels: input channels (= ``len(mean)``).
        mean, std: per-channel normalisation in [0, 1] units.
        bands: names of the input channels in order; None for plain gray/RGB.
        reader: how files were read (band selection, window, slice axis, nodata and its fill).
        statistics: per-channel statistics of the training data (``acclimate.data.stats``).
        clip: ``data.clip`` with its bounds, or None.
    """

    backbone: BackboneRef
    method: str
    image_size: int
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    adapter: AdapterSettings = field(default_factory=AdapterSettings)
    features: str = "pooled"
    bands: tuple[str, ...] | None = None
    reader: ReadOptions = DEFAULT_OPTIONS
    statistics: dict[str, Any] | None = None
    clip: Clip | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain types for a checkpoint (weights_only loads read them), versioned."""
        return {
            "version": VERSION,
            "backbone": dataclasses.asdict(self.backbone),
            "adapter": self.adapter.to_dict(),
            "method": self.method,
            "features": self.features,
            "image_size": self.image_size,
            "channels": self.channels,
            "mean": list(self.mean),
            "std": list(self.std),
            "bands": None if self.bands is None else list(self.bands),
            "reader": self.reader.to_dict(),
            "statistics": self.statistics,
            "clip": None if self.clip is None else self.clip.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: Any, source: str | Path = "run info") -> RunInfo:
        """The inverse of `to_dict`, checked: a malformed entry, or one written by a newer
        acclimate, is a `CheckpointError` of one line naming ``source`` (the file)."""
        if isinstance(d, dict) and "version" not in d and isinstance(d.get("recipe"), dict):
            d = _from_recipe_entry(d)
        version = d.get("version") if isinstance(d, dict) else None
        if isinstance(version, int) and not isinstance(version, bool) and version > VERSION:
            raise CheckpointError(
                f"{source}: written by a newer acclimate (run info version {version}; this one "
                f"reads up to {VERSION}); upgrade acclimate to use it"
            )
        problem = _problem(d)
        if problem is None:
            try:
                return cls._build(d)
            except (TypeError, ValueError, AcclimateError) as e:
                problem = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"{source}: acclimate run info: {problem}; the checkpoint was altered or damaged "
            "(use another checkpoint of the run, or train again)"
        )

    @classmethod
    def _build(cls, d: dict[str, Any]) -> RunInfo:
        clip = d.get("clip")
        bands = d.get("bands")
        return cls(
            backbone=BackboneRef(**d["backbone"]),
            method=d["method"],
            image_size=d["image_size"],
            channels=d["channels"],
            mean=tuple(d["mean"]),
            std=tuple(d["std"]),
            adapter=AdapterSettings(**(d.get("adapter") or {})),
            features=d.get("features") or "pooled",
            bands=None if bands is None else tuple(bands),
            reader=ReadOptions.from_dict(d.get("reader")),
            statistics=d.get("statistics"),
            clip=None
            if clip is None
            else Clip(tuple(clip["percentiles"]), tuple(clip["low"]), tuple(clip["high"])),
        )


def run_info_of(checkpoint: dict[str, Any], path: str | Path) -> RunInfo:
    """The `RunInfo` of a loaded checkpoint (``acclimate.preflight.load_checkpoint_file``)."""
    return RunInfo.from_dict(checkpoint.get(INFO_KEY), path)


def read_run_info(path: str | Path) -> RunInfo:
    """The `RunInfo` of the checkpoint file ``path`` (loaded with ``weights_only=True``)."""
    return run_info_of(load_checkpoint_file(path), path)


def recipe_record(checkpoint: dict[str, Any]) -> dict[str, Any] | None:
    """The resolved recipe a checkpoint was trained with, as a record (for ``recipe.yaml``)."""
    recipe = checkpoint.get(RECIPE_KEY)
    if recipe is None:  # written before run info: the recipe sat inside the metadata
        recipe = (checkpoint.get(INFO_KEY) or {}).get("recipe")
    return recipe if isinstance(recipe, dict) else None


def clip_entry(
    percentiles: tuple[float, float] | None, bounds: tuple[list[float], list[float]] | None
) -> Clip | None:
    """``data.clip`` (percentiles) with the per-channel bounds it gave, or None."""
    if percentiles is None or bounds is None:
        return None
    return Clip(tuple(percentiles), tuple(bounds[0]), tuple(bounds[1]))  # type: ignore[arg-type]


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _from_recipe_entry(entry: dict[str, Any]) -> dict[str, Any]:
    """An entry of the metadata before run info (the whole recipe plus preprocessing) in the
    form of `RunInfo.to_dict`, its backbone, adapter, method and features from the recipe."""
    recipe = entry["recipe"]
    backbone = recipe.get("backbone")
    if isinstance(backbone, dict):
        names = {f.name for f in dataclasses.fields(BackboneRef)}
        backbone = {k: v for k, v in backbone.items() if k in names}
    reader = entry.get("reader")
    if reader is None:  # older still: the reader keys were the recipe's data keys
        try:
            reader = ReadOptions.from_dict(_mapping(recipe.get("data"))).to_dict()
        except (TypeError, ValueError, AcclimateError):
            reader = recipe.get("data")  # reported by the checks that follow
    mean = entry.get("mean")
    return {
        "version": VERSION,
        "backbone": backbone,
        "adapter": recipe.get("adapter") or {},
        "method": _mapping(recipe.get("method")).get("name"),
        "features": _mapping(recipe.get("eval")).get("features") or "pooled",
        "image_size": entry.get("image_size"),
        "channels": entry.get("channels", len(mean) if isinstance(mean, list) else None),
        "mean": mean,
        "std": entry.get("std"),
        "bands": entry.get("bands"),
        "reader": reader,
        "statistics": entry.get("statistics"),
        "clip": entry.get("clip"),
    }


def _problem(d: Any) -> str | None:
    """What is wrong with a run-info entry (as `RunInfo.to_dict` writes it), or None."""
    if not isinstance(d, dict):
        return f"expected a mapping, got {type(d).__name__}"
    version = d.get("version")
    if not _is_int(version) or version < 1:
        return f"version: expected an integer >= 1, got {version!r}"
    b = d.get("backbone")
    if (
        not isinstance(b, dict)
        or not isinstance(b.get("name"), str)
        or not _is_int(b.get("in_chans"))
    ):
        return "backbone: needs a name (str) and in_chans (int)"
    if b.get("weights") is not None and not isinstance(b["weights"], str):
        return f"backbone.weights: expected a reference (str) or null, got {b['weights']!r}"
    if not isinstance(d.get("adapter") or {}, dict):
        return "adapter: must be a mapping"
    if not isinstance(d.get("method"), str):
        return f"method: expected a method's name, got {d.get('method')!r}"
    if kind_problem(d.get("features") or "pooled"):
        return f"features: {kind_problem(d['features'])}"
    problem = channels_problem(d)
    if problem:
        return problem
    problem = preprocessing_problem(d, d["channels"])
    if problem:
        return problem
    clip = d.get("clip")
    if clip is not None and not (
        isinstance(clip.get("percentiles"), list)
        and len(clip["percentiles"]) == 2
        and all(_is_number(v) for v in clip["percentiles"])
    ):
        return f"clip.percentiles: expected [low, high], got {clip.get('percentiles')!r}"
    return None


def channels_problem(meta: dict[str, Any]) -> str | None:
    """What is wrong with ``channels`` and ``bands`` of a checkpoint's run info or an export's
    ``acclimate.json``, or None."""
    channels = meta.get("channels")
    if not _is_int(channels) or channels < 1:
        return f"channels: expected an integer >= 1, got {channels!r}"
    bands = meta.get("bands")
    if bands is not None and (
        not isinstance(bands, list)
        or len(bands) != channels
        or not all(isinstance(v, str) for v in bands)
    ):
        return f"bands: expected null or {channels} band names, got {bands!r}"
    return None


def preprocessing_problem(meta: dict[str, Any], channels: int | None = None) -> str | None:
    """What is wrong with the preprocessing keys of a checkpoint's run info or an export's
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
    if not _is_int(size) or size < 1:
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


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
