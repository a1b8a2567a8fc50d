"""Small checkpoints for adapted backbones (``adapter.save_base: false``) and loading them back.

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
import torch
from torch import nn

from acclimate.adapters.apply import ADAPTER_ATTR, apply_adapter, fingerprint
from acclimate.adapters.config import AdapterError, AdapterSettings
from acclimate.adapters.merge import merge_lora
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


def _same_fingerprint(a: float, b: float) -> bool:
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
        if dropped and not _same_fingerprint(info["base"]["fingerprint"], self.base["fingerprint"]):
            raise ConfigError(
                f"the base weights {self.base.get('weights')} differ from those the checkpoint "
                f"was trained from ({info['base'].get('weights')}); the checkpoint holds only the "
                "adapter tensors, so it needs the very same base weights"
            )


def load_adapted_backbone(path: str | Path, prefer: str = "teacher") -> nn.Module:
    """Rebuild the backbone of a training checkpoint made with an ``adapter:`` section, merged.

    The base model comes from the checkpoint's recipe (or its base-weights reference), the adapter
    is applied again, the checkpoint's backbone tensors are loaded over it (``teacher_backbone.``
    or ``backbone.``, after ``prefer``), and LoRA is merged: the result is a plain timm model.
    """
    from acclimate.backbones import BackboneError, create_backbone

    obj = torch.load(path, map_location="cpu", weights_only=True)
    recipe = obj["acclimate"]["recipe"]
    info = obj.get(CKPT_KEY) or {}
    section = dict(recipe["backbone"])
    if info.get("base"):
        section.update({k: info["base"][k] for k in section if k in info["base"]})
    model = create_backbone(**section)
    apply_adapter(model, AdapterSettings(**recipe.get("adapter") or {}))
    order = ("teacher_backbone.", "backbone.") if prefer == "teacher" else ("backbone.",)
    sd = obj["state_dict"]
    prefix = next((p for p in order if any(k.startswith(p) for k in sd)), None)
    if prefix is None:
        raise BackboneError(f"{path}: no {' or '.join(order)}* tensors in its state_dict")
    own = {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
    dropped = {k[len(prefix) :] for k in info.get("dropped", []) if k.startswith(prefix)}
    if dropped:
        frozen = getattr(model, ADAPTER_ATTR)["frozen"]
        if not _same_fingerprint(info["base"]["fingerprint"], fingerprint(model, frozen)):
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
