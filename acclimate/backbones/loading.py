"""Load a checkpoint file into a timm backbone, whatever its format.

`load_weights` = read + convert (`acclimate.backbones.formats`) + fit to the model (drop the
classifier, adapt the input conv to ``in_chans``, resample the ViT position embedding) + check
that every model tensor is covered + ``load_state_dict``. Nothing is initialised after loading.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

from timm.layers import resample_abs_pos_embed
from timm.models import adapt_input_conv
from torch import Tensor, nn

from acclimate.backbones.errors import BackboneError
from acclimate.backbones.formats import (
    StateDict,
    classifier_prefixes,
    first_conv_keys,
    get_format,
    model_name,
    read_checkpoint,
)

log = logging.getLogger(__name__)

_MAX_EXAMPLES = 5


@dataclass(frozen=True)
class LoadReport:
    """What `load_weights` did.

    Attributes:
        path: the file loaded.
        format: detected naming (see `acclimate.backbones.formats.FORMATS`).
        n_loaded: number of tensors copied into the model.
        adapted_keys: input-conv weights adapted to the model's channel count.
        unexpected: checkpoint keys the model has no place for (ignored).
        source: where the tensors were in the file, e.g. ``"state_dict/teacher_backbone."``.
    """

    path: str
    format: str
    n_loaded: int
    adapted_keys: tuple[str, ...] = ()
    unexpected: tuple[str, ...] = ()
    source: str = ""


def drop_classifier(sd: StateDict, model: nn.Module) -> StateDict:
    """Remove the classifier keys (``pretrained_cfg["classifier"]``); backbones have none."""
    heads = classifier_prefixes(model)
    return {k: v for k, v in sd.items() if not (heads and k.startswith(heads))}


def adapt_first_conv(sd: StateDict, model: nn.Module, source: str) -> tuple[StateDict, list[str]]:
    """Adapt RGB input-conv weights (O, 3, kH, kW) to the model's (O, C, kH, kW) with timm.

    timm's ``adapt_input_conv`` sums the RGB filters for C = 1 and otherwise repeats them
    cyclically, scaled by 3 / C, so that the response to a constant image is kept.

    Returns:
        The state dict with adapted weights and the list of adapted keys.
    """
    target = model.state_dict()
    out, adapted = dict(sd), []
    for key in first_conv_keys(model):
        if key not in out or key not in target:
            continue
        weight, want = out[key], target[key].shape
        if weight.ndim != 4 or len(want) != 4 or weight.shape[1] == want[1]:
            continue
        if weight.shape[1] != 3:
            raise BackboneError(
                f"{source}: {key} has {weight.shape[1]} input channels and the model {want[1]}; "
                f"only 3-channel (RGB) weights can be adapted: create the backbone with "
                f"in_chans={weight.shape[1]}"
            )
        out[key] = adapt_input_conv(want[1], weight)
        adapted.append(key)
        log.info("adapted %s from %d to %d input channels", key, weight.shape[1], want[1])
    return out, adapted


def resize_pos_embed(sd: StateDict, model: nn.Module, source: str) -> StateDict:
    """Resample a ViT ``pos_embed`` (1, P + N_old, D) to the model's grid (1, P + N_new, D).

    P = prefix tokens that carry a position (0 for ``no_embed_class`` models); they are kept
    as they are. The old grid is assumed square.
    """
    pos = getattr(model, "pos_embed", None)
    if not isinstance(pos, Tensor) or "pos_embed" not in sd:
        return sd
    old = sd["pos_embed"]
    if old.shape == pos.shape or old.ndim != 3 or old.shape[-1] != pos.shape[-1]:
        return sd  # equal, or a mismatch that `load_weights` reports
    n_prefix = 0 if getattr(model, "no_embed_class", False) else model.num_prefix_tokens
    side = math.isqrt(old.shape[1] - n_prefix)
    if side * side != old.shape[1] - n_prefix:
        raise BackboneError(
            f"{source}: pos_embed {tuple(old.shape)} is not a square grid plus {n_prefix} prefix "
            f"tokens; it does not fit {model_name(model)}"
        )
    new_size = list(model.patch_embed.grid_size)
    log.info("resampled pos_embed from %dx%d to %dx%d", side, side, *new_size)
    out = dict(sd)
    out["pos_embed"] = resample_abs_pos_embed(
        old, new_size=new_size, old_size=[side, side], num_prefix_tokens=n_prefix
    )
    return out


def load_weights(model: nn.Module, path: str | Path, prefer: str = "teacher") -> LoadReport:
    """Load a checkpoint file of any known format into ``model`` (in place).

    Args:
        model: a timm backbone (built with ``num_classes=0``).
        path: checkpoint file, see `acclimate.backbones.formats.read_state_dict`.
        prefer: ``"teacher"`` (EMA teacher when present) or ``"student"``.

    Returns:
        A `LoadReport`.

    Raises:
        BackboneError: the file is missing or unreadable, or does not cover every model tensor
            with the right shape (the message names the file, the format and example keys).
    """
    sd, fmt_name, where = read_checkpoint(path, prefer)
    source = str(path)
    sd = get_format(fmt_name).convert(sd, model)
    sd = drop_classifier(sd, model)
    sd, adapted = adapt_first_conv(sd, model, source)
    sd = resize_pos_embed(sd, model, source)

    target = model.state_dict()
    missing = [k for k in target if k not in sd and not k.endswith("num_batches_tracked")]
    wrong = [
        f"{k} {tuple(sd[k].shape)} vs {tuple(v.shape)}"
        for k, v in target.items()
        if k in sd and sd[k].shape != v.shape
    ]
    if missing or wrong:
        problems = []
        if missing:
            problems.append(f"{len(missing)} model tensors missing, e.g. {missing[:_MAX_EXAMPLES]}")
        if wrong:
            problems.append(f"{len(wrong)} shape mismatches, e.g. {wrong[:_MAX_EXAMPLES]}")
        raise BackboneError(
            f"{source} (format: {fmt_name}) does not fit {model_name(model)}: "
            f"{'; '.join(problems)}; check that the backbone name matches the checkpoint"
        )
    unexpected = [k for k in sd if k not in target]
    if unexpected:
        log.warning(
            "%s: ignoring %d tensors the model does not have, e.g. %s",
            source,
            len(unexpected),
            unexpected[:_MAX_EXAMPLES],
        )
    model.load_state_dict({k: v for k, v in sd.items() if k in target}, strict=False)
    n_loaded = len(sd) - len(unexpected)
    log.info("loaded %d tensors from %s (format: %s)", n_loaded, source, fmt_name)
    return LoadReport(
        path=source,
        format=fmt_name,
        n_loaded=n_loaded,
        adapted_keys=tuple(adapted),
        unexpected=tuple(unexpected),
        source=where,
    )
