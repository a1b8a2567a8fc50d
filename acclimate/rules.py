"""Value rules of recipe keys: signatures give the types (`acclimate.config`), this table the
ranges and choices. One row per key (``method.KEY`` applies to whichever method has it); a rule
returns what the value "must be", or None when it fits."""

from __future__ import annotations

import difflib
import importlib.util
import os
import platform
import re
import shutil
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# --- value rules ----------------------------------------------------------------------------------
# Signatures give the types; these give the ranges. One row per key (``method.KEY`` applies to
# whichever method has that key); a rule returns what the value "must be", or None when it fits.


@dataclass(frozen=True)
class Range:
    """Numbers between ``lo`` and ``hi`` (each bound closed unless ``*_open``), plus the special
    values in ``also`` ({value: meaning}). A list is checked value by value, and with ``ordered``
    must also be a [min, max] pair with min <= max. None always fits (the type allowed it)."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    also: tuple[tuple[float, str], ...] = ()
    ordered: bool = False
    note: str = ""

    def describe(self) -> str:
        if self.lo is not None and self.hi is not None:
            left, right = "(" if self.lo_open else "[", ")" if self.hi_open else "]"
            text = f"in {left}{_num(self.lo)}, {_num(self.hi)}{right}"
        elif self.lo is not None:
            text = f"{'>' if self.lo_open else '>='} {_num(self.lo)}"
        else:
            text = f"{'<' if self.hi_open else '<='} {_num(self.hi)}"
        special = "".join(f"{_num(v)} ({meaning}) or " for v, meaning in self.also)
        return special + text + (f" ({self.note})" if self.note else "")

    def _fits(self, v: float) -> bool:
        if any(v == s for s, _ in self.also):
            return True
        lo_ok = self.lo is None or (v > self.lo if self.lo_open else v >= self.lo)
        hi_ok = self.hi is None or (v < self.hi if self.hi_open else v <= self.hi)
        return lo_ok and hi_ok

    def __call__(self, value: Any) -> str | None:
        if value is None or isinstance(value, (str, bool, dict)):
            return None  # other members of a union type (e.g. "auto"); the type check has run
        if isinstance(value, (list, tuple)):
            if self.ordered and len(value) == 2 and value[0] > value[1]:
                return f"[min, max] with min <= max, each {self.describe()}"
            if not all(self._fits(v) for v in value if isinstance(v, (int, float))):
                return f"each {self.describe()}"
            return None
        return None if self._fits(value) else self.describe()


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


Rule = Callable[[Any], str | None]

COUNT = Range(1)  # a number of things that must exist: batch size, layers, dimensions
ZERO_OK = Range(0)  # a count, a period (0 disables) or a non-negative weight
POSITIVE = Range(0, lo_open=True)  # temperatures, learning rates, timeouts
PROBABILITY = Range(0, 1)
FRACTION = Range(0, 1, hi_open=True)  # a part of something that must leave some of it
MOMENTUM = Range(0, 1)
SCALE = Range(0, 1, lo_open=True, ordered=True)  # crop area fractions (min, max)


def _limit_batches(value: Any) -> str | None:
    if value is None or (isinstance(value, int) and value >= 1):
        return None
    if isinstance(value, float) and 0 < value <= 1:
        return None
    return "a count >= 1 or a fraction in (0, 1]"


def _precisions() -> list[str]:
    """The precision strings Lightning's Trainer accepts (transformer-engine only when its
    package is installed)."""

    from lightning.fabric.connector import _PRECISION_INPUT_STR, _PRECISION_INPUT_STR_ALIAS

    names = [*typing.get_args(_PRECISION_INPUT_STR), *typing.get_args(_PRECISION_INPUT_STR_ALIAS)]
    if importlib.util.find_spec("transformer_engine") is None:
        names = [n for n in names if not n.startswith("transformer-engine")]
    return names


def _precision(value: Any) -> str | None:
    names = ["auto", *_precisions()]  # auto: acclimate.precision decides per run
    return None if value in names else f"one of {', '.join(names)}"


def _compile(value: Any) -> str | None:
    """``trainer.compile: true`` needs a Python that torch.compile runs on and, without a GPU,
    a C++ compiler for inductor's CPU kernels (``$CXX`` or g++, as inductor looks for it)."""
    if value is not True:
        return None
    import torch

    if not torch._dynamo.is_dynamo_supported():
        return f"false: torch.compile does not run on Python {platform.python_version()}"
    cxx = os.environ.get("CXX") or "g++"
    if not torch.cuda.is_available() and shutil.which(cxx) is None:
        return f"false here: torch.compile needs a C++ compiler on CPU ({cxx} not found)"
    return None


def _duration(value: Any) -> str | None:
    from acclimate.budget import parse_duration

    if value is None:
        return None
    try:
        parse_duration(value)
    except ValueError:
        return "a positive duration DD:HH:MM:SS (e.g. 00:00:30:00) or null"
    return None


def _strategy(value: Any) -> str | None:
    from lightning.pytorch.strategies import StrategyRegistry

    names = ["auto", *StrategyRegistry.available_strategies()]
    if value in names:
        return None
    close = difflib.get_close_matches(str(value), names, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"a Lightning strategy ({hint}e.g. auto, ddp, fsdp)"


def available_accelerators() -> dict[str, bool]:
    """Lightning's accelerator names (plus ``gpu``) and whether each is usable on this machine."""
    from lightning.pytorch.accelerators import AcceleratorRegistry

    out = {"auto": True}
    for name in sorted(AcceleratorRegistry.available_accelerators()):
        cls = AcceleratorRegistry[name]["accelerator"]
        try:
            out[name] = bool(cls.is_available())
        except Exception:  # a backend that cannot even be probed is not available
            out[name] = False
    out["gpu"] = out.get("cuda", False) or out.get("mps", False)
    return out


def _accelerator(value: Any) -> str | None:
    known = available_accelerators()
    usable = ", ".join(n for n, ok in known.items() if ok)
    if value not in known:
        return f"one of {', '.join(known)}"
    if not known[value]:
        return f"an accelerator available on this machine ({usable})"
    return None


_DEVICE_STRING = re.compile(r"^(auto|-1|[1-9]\d*|\d+(,\d+)*,?)$")


def _devices(value: Any) -> str | None:
    ok = (
        (isinstance(value, int) and (value >= 1 or value == -1))
        or (isinstance(value, str) and _DEVICE_STRING.match(value.strip()) is not None)
        or (
            isinstance(value, list)
            and bool(value)
            and all(v >= 0 for v in value)
            and len(set(value)) == len(value)
        )
    )
    return None if ok else "auto, a count >= 1, -1 (all GPUs) or a list of GPU indices"


def _window(value: Any) -> str | None:
    if value is None or (len(value) == 2 and value[1] > 1):
        return None
    return "[centre, width] with width > 1 (raw or physical units, e.g. [40, 400] for CT)"


def _clip(value: Any) -> str | None:
    from acclimate.data.stats import check_clip

    try:
        value is None or check_clip(value)
    except ValueError:
        return "percentile bounds [low, high] with 0 <= low < high <= 100 (e.g. [1, 99])"
    return None


def _cache_mode(value: Any) -> str | None:
    from acclimate.data.decoded_cache import CACHE_MODES

    if value in CACHE_MODES:
        return None
    close = difflib.get_close_matches(str(value), CACHE_MODES, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return (
        "auto (decode into memory when it fits under data.cache_max_gb), memory (always) "
        f"or none (decode every epoch){hint}"
    )


def _feature_kind(value: Any) -> str | None:
    from acclimate.eval.features import VECTOR_KINDS, kind_problem

    return None if kind_problem(value) is None else VECTOR_KINDS


def _pipeline_file(value: Any) -> str | None:
    from acclimate.data.user_augment import FORMATS

    path = None if value is None else Path(value).expanduser()
    if path is None or (path.is_file() and path.suffix.lower() in FORMATS):
        return None
    return "an existing .yaml/.yml/.json file written by albumentations' A.save, or null"


RULES: dict[str, Rule] = {
    "data.channels": COUNT,  # first: backbone.in_chans follows it when not given
    "seed": Range(0, 2**32 - 1),
    "backbone.in_chans": COUNT,
    "backbone.drop_path_rate": FRACTION,
    "adapter.lora_rank": ZERO_OK,
    "adapter.lora_alpha": POSITIVE,
    "adapter.lora_dropout": FRACTION,
    "adapter.unfreeze_last_blocks": ZERO_OK,
    "data.window": _window,
    "data.slice_axis": Range(0, 2),
    "data.image_size": COUNT,
    "data.std": POSITIVE,
    "data.clip": _clip,
    "data.stats_images": COUNT,
    "data.max_pixels": COUNT,
    "data.batch_size": COUNT,
    "data.num_workers": ZERO_OK,
    "data.cache": _cache_mode,
    "data.cache_max_gb": POSITIVE,
    "data.max_bad_fraction": FRACTION,
    "augment.global_size": COUNT,
    "augment.local_size": COUNT,
    "augment.n_local": ZERO_OK,
    "augment.global_scale": SCALE,
    "augment.local_scale": SCALE,
    "augment.color_strength": ZERO_OK,
    "augment.blur_p": PROBABILITY,
    "augment.solarize_p": PROBABILITY,
    "augment.albumentations": _pipeline_file,
    "optim.lr": POSITIVE,
    "optim.min_lr": ZERO_OK,
    "optim.backbone_lr_mult": POSITIVE,
    "optim.weight_decay": ZERO_OK,
    "optim.weight_decay_end": ZERO_OK,
    "optim.warmup_epochs": ZERO_OK,
    "optim.freeze_backbone_epochs": ZERO_OK,
    "optim.layer_decay": Range(0, 1, lo_open=True),
    "optim.patch_embed_lr_mult": POSITIVE,
    "trainer.max_epochs": COUNT,
    "trainer.max_steps": Range(1, also=((-1, "no limit"),)),
    "trainer.accelerator": _accelerator,
    "trainer.devices": _devices,
    "trainer.num_nodes": COUNT,
    "trainer.strategy": _strategy,
    "trainer.precision": _precision,
    "trainer.compile": _compile,
    "trainer.accumulate_grad_batches": COUNT,
    "trainer.gradient_clip_val": Range(0, note="null disables clipping"),
    "trainer.log_every_n_steps": COUNT,
    "trainer.checkpoint_every_n_epochs": ZERO_OK,
    "trainer.keep_checkpoints": Range(1, also=((-1, "keep all"),)),
    "trainer.checkpoint_every_n_steps": ZERO_OK,
    "trainer.limit_train_batches": _limit_batches,
    "trainer.timeout_s": POSITIVE,
    "trainer.max_time": _duration,
    "trainer.collapse_spread": ZERO_OK,
    "trainer.collapse_steps": ZERO_OK,
    "eval.every_n_epochs": ZERO_OK,
    "eval.knn_k": COUNT,
    "eval.knn_temperature": POSITIVE,
    "eval.probe_weight_decay": POSITIVE,
    "eval.probe_weight_decays": POSITIVE,
    "eval.probe_val_fraction": Range(0, 1, lo_open=True, hi_open=True),
    "eval.max_train_images": COUNT,
    "eval.max_test_images": COUNT,
    "eval.batch_size": COUNT,
    "eval.num_workers": ZERO_OK,
    "eval.n_pictures": ZERO_OK,
    "eval.reference_size": COUNT,
    "eval.projector_images": ZERO_OK,
    "eval.features": _feature_kind,
    # method.KEY: whichever method has the key
    "method.out_dim": COUNT,
    "method.hidden_dim": COUNT,
    "method.bottleneck_dim": COUNT,
    "method.head_layers": COUNT,
    "method.student_temp": POSITIVE,
    "method.teacher_temp": POSITIVE,
    "method.warmup_teacher_temp": POSITIVE,
    "method.warmup_teacher_temp_epochs": ZERO_OK,
    "method.center_momentum": MOMENTUM,
    "method.momentum_teacher": MOMENTUM,
    "method.momentum_teacher_end": MOMENTUM,
    "method.freeze_last_layer_epochs": ZERO_OK,
    "method.ibot_weight": ZERO_OK,
    "method.koleo_weight": ZERO_OK,
    "method.mask_ratio": Range(0, 1, hi_open=True, ordered=True),
    "method.mask_prob": PROBABILITY,
    "method.sinkhorn_iters": COUNT,
    "method.decoder_dim": COUNT,
    "method.decoder_depth": COUNT,
    "method.decoder_heads": COUNT,
    "method.proj_hidden_dim": COUNT,
    "method.proj_dim": COUNT,
    "method.proj_layers": COUNT,
    "method.pred_layers": COUNT,
    "method.dim": COUNT,
    "method.temperature": POSITIVE,
    "method.momentum": MOMENTUM,
    "method.momentum_end": MOMENTUM,
    "method.teacher_image_size": COUNT,
    "method.teacher_layers": ZERO_OK,
    "method.smooth_l1_beta": ZERO_OK,
    "method.teacher_scale": Range(1, 8),
    "method.anchor_weight": ZERO_OK,
    "export.start_blend": Range(0, 1, note="1: the adapted weights, 0: the start"),
}


# Numeric keys whose only rule is to be finite (every number in a recipe must be): values in the
# data's own units, and band indices (checked against data.channels).
FREE_NUMBERS = {"data.mean", "data.nodata", "data.nodata_fill", "data.bands"}
