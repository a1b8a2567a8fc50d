"""The ``adapter:`` section of a recipe: what of the backbone trains."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from acclimate.errors import AcclimateError


class AdapterError(AcclimateError):
    """An adapter setting that does not fit the backbone (no matching layer, unknown blocks)."""


@dataclass
class AdapterSettings:
    """Parameter-efficient continued pretraining: LoRA and partial unfreezing.

    Leave everything at its default to train the whole backbone. Setting any of ``lora_rank``,
    ``unfreeze_last_blocks``, ``train_norms``, ``train_biases`` or ``train_patch_embed`` freezes
    the rest of the backbone; they combine. ExPLoRA (Khanna et al. 2024) on DINOv2: LoRA on the
    attention projections of the frozen blocks, the last block unfrozen, all norms trained.

    Args:
        lora_rank: rank r of the LoRA updates (Hu et al. 2022); 0 = no LoRA. 8 to 64 is usual;
            raise it when the domain is far from the pretraining data.
        lora_alpha: the update is scaled by ``lora_alpha / lora_rank``; None = ``lora_rank``
            (scale 1). Keep it fixed while sweeping the rank.
        lora_dropout: dropout on the input of the LoRA path (0.0 to 0.1).
        target_modules: which ``nn.Linear`` (or ``groups=1`` ``nn.Conv2d``) layers get LoRA. A list
            matches a module whose dotted name equals an entry or ends with ``.entry`` (timm ViT:
            ``qkv``, ``proj``, ``fc1``, ``fc2``); a string is a regular expression that must match
            the whole name (``"blocks\\.\\d+\\.attn\\.qkv"``). Blocks unfrozen by
            ``unfreeze_last_blocks`` get no LoRA: they train in full.
        unfreeze_last_blocks: train the last k blocks in full (ViT transformer blocks, ResNet
            ``layerN`` stages, EfficientNet / ConvNeXt stages), plus what follows them (the final
            norm). ExPLoRA: 1 or 2.
        train_norms: train every normalisation layer's scale and shift (LayerNorm, BatchNorm,
            GroupNorm); BatchNorm statistics follow ``optim.freeze_norm_stats``.
        train_biases: train every bias (BitFit, Ben Zaken et al. 2022).
        train_patch_embed: train the patch embedding with the position embedding and class /
            register tokens (CNNs: the stem convolution). Try it for inputs unlike photographs
            (many bands, grayscale scans).
        save_base: False = checkpoints hold only the trainable tensors of the backbone (and its
            EMA copy) plus a reference to the base weights, megabytes instead of hundreds; the
            base weights file must then stay where it is to resume or export.
    """

    lora_rank: int = 0
    lora_alpha: float | None = None
    lora_dropout: float = 0.0
    target_modules: tuple[str, ...] | str = ("qkv",)
    unfreeze_last_blocks: int = 0
    train_norms: bool = False
    train_biases: bool = False
    train_patch_embed: bool = False
    save_base: bool = True

    def __post_init__(self) -> None:
        if self.lora_rank < 0:
            raise ValueError(f"lora_rank must be >= 0, got {self.lora_rank}")
        if self.lora_alpha is not None and self.lora_alpha <= 0:
            raise ValueError(f"lora_alpha must be positive, got {self.lora_alpha}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if self.unfreeze_last_blocks < 0:
            raise ValueError(f"unfreeze_last_blocks must be >= 0, got {self.unfreeze_last_blocks}")
        if not isinstance(self.target_modules, str):
            self.target_modules = tuple(self.target_modules)
            if self.lora_rank and not self.target_modules:
                raise ValueError("target_modules is empty; name the layers that get LoRA")

    @property
    def active(self) -> bool:
        """Whether the backbone is only partly trained (anything set beyond the defaults)."""
        return bool(
            self.lora_rank
            or self.unfreeze_last_blocks
            or self.train_norms
            or self.train_biases
            or self.train_patch_embed
        )

    @property
    def alpha(self) -> float:
        return float(self.lora_rank if self.lora_alpha is None else self.lora_alpha)

    def to_dict(self) -> dict:
        d = asdict(self)
        if isinstance(d["target_modules"], tuple):
            d["target_modules"] = list(d["target_modules"])
        return d
