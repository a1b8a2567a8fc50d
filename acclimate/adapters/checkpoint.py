"""Small checkpoints for adapted backbones (``adapter.save_base: false``); loading them back
is ``acclimate.export.load.load_adapted_backbone``.

A checkpoint then holds the trainable tensors (LoRA, unfrozen blocks, norms), the heads and
optimiser state, and under ``"acclimate_adapter"`` a reference to the base weights (timm name,
weights file, a checksum): every frozen base tensor of every adapted copy (student and EMA
teacher) is left out and re-filled from the base weights on resume and on export.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from torch import nn

from acclimate.adapters.apply import ADAPTER_ATTR, fingerprint
from acclimate.adapters.config import AdapterError
from acclimate.errors import ConfigError

CKPT_KEY = "acclimate_adapter"


def base_reference(backbone_section: dict[str, Any], model: nn.Module) -> dict[str, Any]:
    """The base weights of an adapted ``model`` as plain types: the recipe's ``backbone:`` section
    with an absolute weights path, and a checksum of the frozen tensors."""
    ref = dict(backbone_section)
    weights = ref.get("weights")
    if weights is None:
        if not getattr(model, ADAPTER_ATTR)["settings"]["save_base"]:
            raise AdapterError(
                "save_base: false needs base weights to refer to, but backbone.weights is null "
                "(random init); set save_base: true"
            )
    elif weights != "hub" and not str(weights).startswith("package:") and Path(weights).exists():
        ref["weights"] = str(Path(weights).resolve())
    frozen = getattr(model, ADAPTER_ATTR)["frozen"]
    ref["fingerprint"] = fingerprint(model, frozen)
    return ref


def same_fingerprint(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-6)


def _adapted_prefixes(module: nn.Module) -> list[tuple[str, list[str]]]:
    return [
        (name + ".", getattr(m, ADAPTER_ATTR)["frozen"])
        for name, m in module.named_modules()
        if name and getattr(m, ADAPTER_ATTR, None) is not None
    ]


class AdapterCheckpoint(pl.Callback):
    """Leave the frozen base tensors out of checkpoints (``save_base=False``) and check, on
    resume, that the checkpoint plus the freshly loaded base weights cover the whole module.

    The module loads checkpoints non-strictly while this callback is attached (the left-out
    tensors keep the base values the module was built with); ``on_load_checkpoint`` then fails on
    any key that is missing without having been left out on purpose, or on changed base weights.
    """

    def __init__(self, base: dict[str, Any], save_base: bool) -> None:
        self.base, self.save_base = base, save_base

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        pl_module.strict_loading = False

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        sd = checkpoint["state_dict"]
        dropped = []
        if not self.save_base:
            for prefix, frozen in _adapted_prefixes(pl_module):
                for name in frozen:
                    if sd.pop(prefix + name, None) is not None:
                        dropped.append(prefix + name)
        checkpoint[CKPT_KEY] = {"base": self.base, "save_base": self.save_base, "dropped": dropped}

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        info = checkpoint.get(CKPT_KEY) or {}
        dropped = set(info.get("dropped", []))
        expected, have = set(pl_module.state_dict()), set(checkpoint["state_dict"])
        missing, unexpected = sorted(expected - have - dropped), sorted(have - expected)
        if missing or unexpected:
            raise ConfigError(
                f"checkpoint does not fit the module: {len(missing)} tensors missing "
                f"(e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]}); "
                "was it trained with another adapter: section?"
            )
        if dropped and not same_fingerprint(info["base"]["fingerprint"], self.base["fingerprint"]):
            raise ConfigError(
                f"the base weights {self.base.get('weights')} differ from those the checkpoint "
                f"was trained from ({info['base'].get('weights')}); the checkpoint holds only the "
                "adapter tensors, so it needs the very same base weights"
            )
