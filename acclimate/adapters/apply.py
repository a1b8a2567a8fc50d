"""Apply an adapter policy to a backbone: freeze, inject LoRA, record what is frozen."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from acclimate.adapters.config import AdapterSettings
from acclimate.adapters.freeze import count_parameters, last_blocks, trainable_names
from acclimate.adapters.inject import inject_lora

# Attribute set on an adapted backbone (and so on its deep copies, e.g. an EMA teacher):
# {"settings": AdapterSettings.to_dict(), "frozen": names of the frozen base parameters}.
ADAPTER_ATTR = "acclimate_adapter"


@dataclass(frozen=True)
class AdapterReport:
    """What `apply_adapter` did: wrapped layers, unfrozen blocks and parameter counts."""

    lora_layers: tuple[str, ...]
    unfrozen_blocks: tuple[str, ...]
    trainable: int
    total: int

    @property
    def percent(self) -> float:
        return 100.0 * self.trainable / max(self.total, 1)

    def summary(self) -> str:
        blocks = ", ".join(self.unfrozen_blocks) or "none"
        return (
            f"trainable backbone parameters: {self.trainable:,} of {self.total:,} "
            f"({self.percent:.2f}%); LoRA layers: {len(self.lora_layers)}; unfrozen: {blocks}"
        )


def apply_adapter(model: nn.Module, settings: AdapterSettings) -> AdapterReport:
    """Make ``model`` (in place) train only what ``settings`` asks for.

    Apply it to the student backbone before a method copies it (EMA teacher): the copy then has
    the same LoRA layers, and EMA over the state dict follows the student.
    """
    if not settings.active:
        trainable, total = count_parameters(model)
        return AdapterReport((), (), trainable, total)
    s = settings
    blocks = last_blocks(model, s.unfreeze_last_blocks)
    train = trainable_names(
        model, s.unfreeze_last_blocks, s.train_norms, s.train_biases, s.train_patch_embed
    )
    for name, p in model.named_parameters():
        p.requires_grad_(name in train)
    lora: list[str] = []
    if s.lora_rank:
        exclude = [*blocks, *(["patch_embed"] if s.train_patch_embed else [])]
        lora = inject_lora(
            model, s.target_modules, s.lora_rank, s.alpha, s.lora_dropout, exclude=exclude
        )
    frozen = sorted(n for n, p in model.named_parameters() if not p.requires_grad)
    setattr(model, ADAPTER_ATTR, {"settings": s.to_dict(), "frozen": frozen})
    trainable, total = count_parameters(model)
    return AdapterReport(tuple(lora), tuple(blocks), trainable, total)


@torch.no_grad()
def fingerprint(model: nn.Module, names: list[str]) -> float:
    """A checksum of the named parameters (sum of their float64 sums), to check on resume or
    export that the base weights a small checkpoint refers to are the ones it was trained from."""
    params = dict(model.named_parameters())
    return float(sum(params[n].double().sum().item() for n in names if n in params))
