"""Optimiser settings shared by every method: the ``optim:`` section of a recipe."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

from torch import nn


@dataclass
class OptimSettings:
    """How the backbone and the heads are optimised.

    The defaults protect what the pretrained backbone knows (shared/DESIGN.md, "protect"): the heads
    warm up for ``freeze_backbone_epochs`` with the backbone frozen, then the backbone trains at
    ``backbone_lr_mult`` times the head's learning rate with its own warm-up.

    Args:
        lr: peak head learning rate per 256 images; scaled by total batch / 256 (Goyal et al. 2017).
        min_lr: final learning rate of the cosine decay (also scaled).
        backbone_lr_mult: backbone learning rate relative to ``lr``. Lower it if the before/after
            report shows a drop; 1.0 is training from scratch.
        weight_decay: AdamW weight decay at the start (not applied to biases and norms).
        weight_decay_end: weight decay at the end (cosine); None keeps it constant.
        warmup_epochs: linear learning-rate warm-up, for the heads from step 0 and for the backbone
            from the end of the frozen phase. Fractions of an epoch are allowed.
        freeze_backbone_epochs: epochs of head-only training with the backbone frozen (eval mode,
            no gradient). 0 trains everything from the first step.
        optimizer: ``adamw`` (default) or ``sgd`` (momentum 0.9).
        freeze_norm_stats: keep the backbone's BatchNorm running statistics as pretrained (the
            layers stay in eval mode; their scale and shift still train). Re-estimating them on
            the new domain is what costs most of the accuracy: on the EuroSAT demo, re-estimated
            BN statistics alone drop the frozen linear probe of EfficientNet-Lite0 from 0.880 to
            0.765. Set False when training from scratch.
    """

    lr: float = 5e-4
    min_lr: float = 1e-6
    backbone_lr_mult: float = 0.1
    weight_decay: float = 0.04
    weight_decay_end: float | None = None
    warmup_epochs: float = 1.0
    freeze_backbone_epochs: float = 1.0
    optimizer: Literal["adamw", "sgd"] = "adamw"
    freeze_norm_stats: bool = True

    def __post_init__(self) -> None:
        for name in ("lr", "backbone_lr_mult"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("min_lr", "weight_decay", "warmup_epochs", "freeze_backbone_epochs"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")

    def to_dict(self) -> dict:
        return asdict(self)


def param_groups(module: nn.Module, lr_scale: float, weight_decay: bool = True) -> list[dict]:
    """Split trainable parameters into decayed and non-decayed groups (biases and norms: no decay).

    ``lr_scale`` is stored in each group and multiplies the scheduled learning rate.
    """
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    groups = []
    if decay:
        groups.append({"params": decay, "lr_scale": lr_scale, "apply_wd": weight_decay})
    if no_decay:
        groups.append({"params": no_decay, "lr_scale": lr_scale, "apply_wd": False})
    return groups
