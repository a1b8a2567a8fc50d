"""Masked autoencoding (He et al., "Masked Autoencoders Are Scalable Vision Learners", CVPR 2022),
continued from a pretrained ViT encoder."""

from __future__ import annotations

from contextlib import nullcontext

import torch
from torch import Tensor, nn

from acclimate.ssl.base import SSLModule
from acclimate.ssl.losses import MAELoss
from acclimate.ssl.mae_decoder import MAEDecoder
from acclimate.ssl.masking import random_masking
from acclimate.ssl.optim import OptimSettings
from acclimate.ssl.tokens import (
    TOKEN_VIT_HINT,
    embed_tokens,
    encode_tokens,
    patch_grid,
    patchify,
    require_token_vit,
    supports_token_masking,
)


class MAE(SSLModule):
    """Encode a random subset of patches with the ViT backbone, reconstruct the rest.

    The encoder is the timm backbone itself (its pretrained position embeddings are kept and
    resampled to the crop size), so the exported backbone is the encoder; the decoder is only
    for training. One view per image: the first global crop of the multi-crop batch
    ``({"global": [(B, C, H, W), ...], "local": [...]}, labels)`` (set ``augment.n_local: 0``).

    Args:
        backbone: a timm ViT (``vision_transformer`` / ``deit`` models), any ``in_chans``.
        batch_size: images per device per step (sets the learning-rate scaling).
        optim: optimiser settings.
        mask_ratio: fraction of patches removed (paper: 0.75; lower it for small crops, where
            few patches remain visible).
        decoder_dim, decoder_depth, decoder_heads: decoder shape (paper: 512, 8, 16; a fresh
            decoder on top of a pretrained encoder trains well with 256, 4, 8).
        norm_pix_loss: predict per-patch normalised pixels (paper: True).
        anchor_weight: weight of a distillation term from the frozen starting backbone
            (cosine distance of pooled features, `acclimate.ssl.anchor`); 0 disables it.
    """

    def __init__(
        self,
        backbone: nn.Module,
        batch_size: int = 64,
        optim: OptimSettings | None = None,
        mask_ratio: float = 0.75,
        decoder_dim: int = 256,
        decoder_depth: int = 4,
        decoder_heads: int = 8,
        norm_pix_loss: bool = True,
        anchor_weight: float = 0.0,
    ) -> None:
        super().__init__(backbone, batch_size, optim)
        vit = require_token_vit(backbone, "mae")
        if not 0 <= mask_ratio < 1:
            raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
        ph, pw = vit.patch_embed.patch_size
        if ph != pw:
            raise ValueError(f"mae needs square patches, got {ph}x{pw}")
        self.save_method_hparams()
        self.patch = ph
        in_chans = vit.patch_embed.proj.weight.shape[1]  # also when LoRA wraps the projection
        self.decoder = MAEDecoder(
            vit.embed_dim, ph * ph * in_chans, decoder_dim, decoder_depth, decoder_heads
        )
        self.criterion = MAELoss(norm_pix=norm_pix_loss)
        self.init_levers(1.0, anchor_weight)

    adam_betas = (0.9, 0.95)  # the MAE paper's pre-training recipe (He et al. 2022, Table 8)

    @classmethod
    def check_backbone(cls, name: str) -> str | None:
        if supports_token_masking(name):
            return None
        return f"mae needs {TOKEN_VIT_HINT}; '{name}' is not one (CNNs have no patch tokens)"

    def head_modules(self) -> list[nn.Module]:
        return [self.decoder]

    def forward_loss(self, images: Tensor, frozen: bool = False) -> tuple[Tensor, Tensor, Tensor]:
        """images (B, C, H, W) -> (loss, pred (B, N, p * p * C), mask (B, N) True = masked).

        ``frozen`` runs the encoder without gradient (the head warm-up)."""
        vit = self.backbone
        grid = patch_grid(vit, images.shape[-2:])
        n_prefix = vit.num_prefix_tokens
        keep, mask = random_masking(
            images.shape[0], grid[0] * grid[1], self.hparams.mask_ratio, images.device
        )
        with torch.no_grad() if frozen else nullcontext():
            tokens = embed_tokens(vit, images)
            visible = tokens[:, n_prefix:].gather(
                1, keep.unsqueeze(-1).expand(-1, -1, tokens.shape[-1])
            )
            latent = encode_tokens(vit, torch.cat([tokens[:, :n_prefix], visible], dim=1))
        pred = self.decoder(latent, keep, grid, n_prefix)
        loss = self.criterion(pred, patchify(images, self.patch), mask)
        return loss, pred, mask

    def training_step(self, batch: tuple[dict, Tensor], batch_idx: int) -> Tensor:
        views, _ = batch
        images = views["global"][0]
        loss, _, _ = self.forward_loss(images, self.backbone_frozen)
        if self.anchor is not None:  # the anchor needs the encoder's features of whole images
            with self.maybe_frozen():
                feats = self.backbone(images)
            loss = self.with_anchor(loss, images, feats)
        self.log_loss(loss)
        return loss
