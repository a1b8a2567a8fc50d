"""Fold LoRA updates back into plain weights: the merged model has the base model's structure and
state-dict names, so stock timm loads it."""

from __future__ import annotations

from torch import nn

from acclimate.adapters.layer import LoRALayer


def has_lora(model: nn.Module) -> bool:
    return any(isinstance(m, LoRALayer) for m in model.modules())


def merge_lora(model: nn.Module) -> nn.Module:
    """Replace every `LoRALayer` of ``model`` (in place) by its base layer holding
    ``W + scaling * B A``; return ``model``. Deep-copy first to keep the adapted model."""
    for name, m in list(model.named_modules()):
        if isinstance(m, LoRALayer):
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name), child, m.merged())
    return model
