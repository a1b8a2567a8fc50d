"""Token-level access to timm ViTs, for masked-image objectives (iBOT in DINOv2, MAE).

timm's ``VisionTransformer.forward_features`` has no mask input, so masked forwards are written
here once, with timm's own stages: ``patch_embed`` -> (replace masked tokens) -> ``_pos_embed``
(prefix tokens, position embeddings resampled to the crop size) -> ``patch_drop`` ->
``norm_pre`` -> ``blocks`` -> ``norm``. Prefix tokens (class and register tokens,
``num_prefix_tokens``) come first in the token sequence.
"""

from __future__ import annotations

import torch
from timm.models import is_model_in_modules
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

# timm modules whose models are VisionTransformer (or a subclass) with a plain PatchEmbed.
_TOKEN_VIT_MODULES = ("vision_transformer", "deit")
TOKEN_VIT_HINT = "a timm ViT such as vit_small_patch14_dinov2, vit_base_patch16_224 or test_vit"


def supports_token_masking(name: str) -> bool:
    """Whether timm model ``name`` is a ViT whose patch tokens can be masked (no model built)."""
    return is_model_in_modules(name.split(".")[0], _TOKEN_VIT_MODULES)


def require_token_vit(model: nn.Module, method: str) -> VisionTransformer:
    """Return ``model`` if it is a timm ``VisionTransformer``, else raise a ValueError."""
    if not isinstance(model, VisionTransformer):
        raise ValueError(
            f"{method} masks patch tokens and needs {TOKEN_VIT_HINT}; got {type(model).__name__}"
        )
    return model


def patch_grid(vit: VisionTransformer, image_hw: tuple[int, int]) -> tuple[int, int]:
    """Patch grid (h, w) of an image of size ``image_hw`` (H, W)."""
    ph, pw = vit.patch_embed.patch_size
    return image_hw[0] // ph, image_hw[1] // pw


def embed_tokens(
    vit: VisionTransformer, x: Tensor, mask: Tensor | None = None, mask_token: Tensor | None = None
) -> Tensor:
    """Patch-embed images and add prefix tokens and position embeddings.

    Args:
        vit: a timm ``VisionTransformer`` (built with or without ``dynamic_img_size``).
        x: images (B, C, H, W).
        mask: optional (B, N) bool, True where the patch embedding is replaced by
            ``mask_token`` before position embeddings are added (iBOT / BEiT masking);
            N = h * w patches in row-major order.
        mask_token: (1, D) or (D,) learnable embedding; required with ``mask``.

    Returns:
        tokens (B, P + N, D): P prefix tokens, then the N patch tokens.
    """
    t = vit.patch_embed(x)  # (B, h, w, D) with dynamic_img_size, else (B, N, D)
    if mask is not None:
        if mask_token is None:
            raise ValueError("a mask needs a mask_token")
        flat = t.reshape(t.shape[0], -1, t.shape[-1])
        flat = flat.where(~mask.unsqueeze(-1), mask_token.reshape(1, 1, -1).to(flat.dtype))
        t = flat.reshape(t.shape)
    t = vit._pos_embed(t)
    t = vit.patch_drop(t)
    return vit.norm_pre(t)


def encode_tokens(vit: VisionTransformer, tokens: Tensor) -> Tensor:
    """Transformer blocks and final norm: (B, T, D) -> (B, T, D)."""
    return vit.norm(vit.blocks(tokens))


def pooled(vit: VisionTransformer, tokens: Tensor) -> Tensor:
    """The backbone's pooled features from its output tokens: (B, P + N, D) -> (B, D).

    The same features as ``vit(x)`` (timm's ``forward_head(pre_logits=True)``): the class token
    for DINOv2 models, the patch average for ``global_pool="avg"`` models.
    """
    return vit.forward_head(tokens, pre_logits=True)


def patchify(images: Tensor, patch: int) -> Tensor:
    """Images (B, C, H, W) -> patches (B, N, p * p * C), any C; N = (H / p) * (W / p) row-major,
    each patch flattened as (p, p, C) (MAE's layout, without its 3-channel assumption)."""
    b, c, h, w = images.shape
    if h % patch or w % patch:
        raise ValueError(f"image size {h}x{w} is not a multiple of the patch size {patch}")
    x = images.reshape(b, c, h // patch, patch, w // patch, patch)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // patch) * (w // patch), patch * patch * c)


def unpatchify(patches: Tensor, patch: int, grid: tuple[int, int]) -> Tensor:
    """Inverse of `patchify`: (B, N, p * p * C) with N = h * w -> images (B, C, h * p, w * p)."""
    b, n, d = patches.shape
    h, w = grid
    c = d // (patch * patch)
    if n != h * w or c * patch * patch != d:
        raise ValueError(f"{tuple(patches.shape)} patches do not fit a {h}x{w} grid of {patch} px")
    x = patches.reshape(b, h, w, patch, patch, c)
    return x.permute(0, 5, 1, 3, 2, 4).reshape(b, c, h * patch, w * patch)


class MaskToken(nn.Module):
    """A learnable (1, D) embedding that replaces masked patch embeddings (BEiT, iBOT, DINOv2).

    Starts at zero, as in DINOv2, unless `DINOv2` initialises it from a released checkpoint's.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1, dim))

    def forward(self) -> Tensor:
        return self.weight
