"""Optimiser settings shared by every method: the ``optim:`` section of a recipe."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

from torch import nn


@dataclass
class OptimSettings:
    """How the backbone and the heads are optimised.

    The defaults protect what the pretrained backbone knows (README, "Careful defaults"): the heads
    warm up for ``freeze_backbone_epochs`` with the backbone frozen, then the backbone trains at
    ``backbone_lr_mult`` times the head's learning rate with its own warm-up.

    Args:
        lr: peak head learning rate per 256 images; scaled by total batch / 256 (Goyal et al. 2017).
        min_lr: final learning rate of the cosine decay (absolute: not scaled by the batch, as
            in DINO's and MAE's code).
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
        layer_decay: layer-wise learning-rate decay (Clark et al. 2020; DINOv2, BEiT): the
            backbone's last layer group trains at ``backbone_lr_mult * layer_decay``, each earlier
            one ``layer_decay`` times slower (groups from timm's ``group_matcher``: stem, blocks,
            ...). 0.9 for ViT-S/B (DINOv2); lower keeps early layers closer to pretrained.
            None: one rate for the whole backbone.
        patch_embed_lr_mult: extra learning-rate factor for a ViT's ``patch_embed`` (DINOv2:
            0.2); 1.0 leaves it alone.
        clip_rule: how ``trainer.gradient_clip_val`` clips: ``auto`` = the method's paper
            (DINO ``per_param``: each parameter's gradient norm; DINOv2 ``per_module``: the
            backbone's and each head's norm; SimCLR, MoCo v3, BYOL, MAE, distill ``none``),
            ``global`` (one norm over everything), or any of those by name. Clip when a run
            diverges (``acclimate`` stops it and says so).
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
    layer_decay: float | None = None
    patch_embed_lr_mult: float = 1.0
    clip_rule: Literal["auto", "global", "per_param", "per_module", "none"] = "auto"

    def __post_init__(self) -> None:
        if self.layer_decay is not None and not 0 < self.layer_decay <= 1:
            raise ValueError(f"layer_decay must be in (0, 1], got {self.layer_decay}")
        for name in ("lr", "backbone_lr_mult", "patch_embed_lr_mult"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("min_lr", "weight_decay", "warmup_epochs", "freeze_backbone_epochs"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")

    def to_dict(self) -> dict:
        return asdict(self)


def layer_ids(module: nn.Module) -> tuple[dict[str, int], int]:
    """Layer index of every parameter for layer-wise decay, and the number of layers.

    Uses timm's ``group_matcher(coarse=False)`` (stem = 0, then each block; for ViTs the class,
    register and position tokens and ``patch_embed`` are the stem). A module without one is a
    single layer.
    """
    from timm.models import group_parameters

    matcher = getattr(module, "group_matcher", None)
    if matcher is None:
        return {name: 0 for name, _ in module.named_parameters()}, 1
    groups = group_parameters(module, matcher(coarse=False))
    ids = {name: i for i, names in enumerate(groups.values()) for name in names}
    return ids, len(groups)


# Modules after the last block: the final norm and head train at the full rate (decay^0).
FINAL_MODULES = ("norm", "fc_norm", "head", "head_drop", "conv_head", "bn2")


def decay_exponents(module: nn.Module) -> dict[str, int]:
    """Exponent of ``layer_decay`` per parameter, as DINOv2's ``get_vit_lr_decay_rate``: the
    final norm and head (`FINAL_MODULES`) 0, the last block 1, each earlier layer one more, the
    stem (patch embedding, class/register/position tokens) the most (number of blocks + 1)."""
    ids, _ = layer_ids(module)
    final = {n for n in ids if n.split(".", 1)[0] in FINAL_MODULES}
    last = max((i for n, i in ids.items() if n not in final), default=0)
    return {n: 0 if n in final else last + 1 - i for n, i in ids.items()}


def param_groups(
    module: nn.Module,
    lr_scale: float,
    weight_decay: bool = True,
    layer_decay: float | None = None,
    patch_embed_lr_mult: float = 1.0,
) -> list[dict]:
    """Split trainable parameters into decayed and non-decayed groups (biases and norms: no decay).

    ``lr_scale`` is stored in each group and multiplies the scheduled learning rate. With
    ``layer_decay``, each parameter is further scaled by ``layer_decay ** decay_exponents[name]``
    (DINOv2's ``get_vit_lr_decay_rate``), and parameters under ``patch_embed.`` by
    ``patch_embed_lr_mult``; groups then also split by scale.
    """
    exponents = decay_exponents(module) if layer_decay is not None else {}
    buckets: dict[tuple[float, bool], list[nn.Parameter]] = {}
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        scale = lr_scale
        if layer_decay is not None:
            scale *= layer_decay ** exponents.get(name, 0)
        if patch_embed_lr_mult != 1.0 and name.startswith("patch_embed."):
            scale *= patch_embed_lr_mult
        decays = not (p.ndim <= 1 or name.endswith(".bias"))
        buckets.setdefault((scale, decays), []).append(p)
    groups = []
    for want in (True, False):  # decayed groups first
        for (scale, decays), params in buckets.items():
            if decays == want:
                apply_wd = weight_decay and decays
                groups.append({"params": params, "lr_scale": scale, "apply_wd": apply_wd})
    return groups


def name_groups(groups: list[dict]) -> None:
    """Name each parameter group for Lightning's ``LearningRateMonitor`` (``lr-AdamW/NAME``):
    the first backbone group ``backbone``, the first head group ``head``, the others
    ``backbone-1``, ``head-1``, ... (layer decay and no-weight-decay groups)."""
    seen: dict[str, int] = {}
    for g in groups:
        part = "backbone" if g.get("is_backbone") else "head"
        k = seen.get(part, 0)
        seen[part] = k + 1
        g["name"] = part if k == 0 else f"{part}-{k}"
