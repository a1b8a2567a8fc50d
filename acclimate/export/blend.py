"""Weight-space blending of the adapted backbone with its start (the ``export:`` section).

WiSE-FT (Wortsman et al., "Robust fine-tuning of zero-shot models", CVPR 2022): interpolating
the weights of a fine-tuned network and of the pretrained one it started from keeps most of
the fine-tuned network's gain on its own domain and much of the start's accuracy elsewhere,
because both lie in one basin of the loss. Here the exported backbone can be
``start + keep * (adapted - start)``: ``keep`` 1 is the adapted network, 0 the start.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from acclimate.errors import AcclimateError


@dataclass
class ExportSettings:
    """The ``export:`` section: what the run's export (and its after-evaluation) is made of.

    Args:
        start_blend: the fraction of the adaptation kept in the exported weights, WiSE-FT's
            alpha: every weight and BatchNorm statistic becomes ``start + start_blend *
            (adapted - start)``. 1 exports the adapted backbone as trained; lower values trade
            gain on the training domain for less forgetting of others (bench/README.md
            measures the trade). The before/after evidence measures the blended weights: what
            is exported is what was measured.
    """

    start_blend: float = 1.0  # its range is checked with the recipe (acclimate.rules)


def start_state(model: nn.Module) -> dict[str, Tensor]:
    """A CPU copy of ``model``'s floating-point state (weights and BatchNorm statistics)."""
    return {
        k: v.detach().to("cpu", copy=True)
        for k, v in model.state_dict().items()
        if v.is_floating_point()
    }


@torch.no_grad()
def blend_with_start(model: nn.Module, start: dict[str, Tensor], keep: float) -> nn.Module:
    """In place: every floating-point tensor ``w`` of ``model``'s state (parameters and
    buffers) becomes ``s + keep * (w - s)`` with ``s = start[name]``; integer buffers
    (BatchNorm's batch counters) are left as they are. ``model`` must be a plain backbone with
    the start's names and shapes (LoRA merged). Returns ``model``."""
    if keep == 1.0:
        return model
    own = {k: v for k, v in model.state_dict().items() if v.is_floating_point()}
    missing = sorted(set(own) - set(start))
    misfit = [k for k in own if k in start and start[k].shape != own[k].shape]
    if missing or misfit:
        raise AcclimateError(
            "export.start_blend: the adapted backbone does not have the start's tensors "
            f"(missing from the start: {missing[:3]}, other shapes: {misfit[:3]}); blend only a "
            "backbone with its own start, or set export.start_blend: 1"
        )
    for k, w in own.items():
        s = start[k].to(device=w.device, dtype=w.dtype)
        w.copy_(torch.lerp(s, w, keep))  # state_dict tensors share the model's storage
    return model


def blended_copy(model: nn.Module, start: dict[str, Tensor], keep: float) -> nn.Module:
    """A blended copy of ``model`` (LoRA merged first), ``model`` itself untouched."""
    from acclimate.adapters import merge_lora

    return blend_with_start(merge_lora(copy.deepcopy(model)), start, keep)
