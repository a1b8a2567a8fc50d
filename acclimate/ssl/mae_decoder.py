"""MAE's light decoder (He et al., "Masked Autoencoders Are Scalable Vision Learners", CVPR 2022,
Sec. 3): encoded visible tokens + mask tokens -> predicted pixels of every patch."""

from __future__ import annotations

import torch
from timm.models.vision_transformer import Block
from torch import Tensor, nn


def sincos_2d(grid: tuple[int, int], dim: int, device: torch.device | None = None) -> Tensor:
    """Fixed 2-D sine-cosine position embeddings (N = h * w, dim); half for rows, half for
    columns. Computed for any grid, so crops of any size need no interpolation."""
    if dim % 4:
        raise ValueError(f"decoder_dim must be a multiple of 4, got {dim}")
    h, w = grid
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, device=device, dtype=torch.float32) / (dim / 4))
    rows = torch.arange(h, device=device, dtype=torch.float32).repeat_interleave(w)
    cols = torch.arange(w, device=device, dtype=torch.float32).repeat(h)
    parts = []
    for pos in (rows, cols):
        angle = pos[:, None] * omega[None, :]
        parts += [angle.sin(), angle.cos()]
    return torch.cat(parts, dim=1)


class MAEDecoder(nn.Module):
    """Linear embed -> mask tokens at the masked positions + 2-D sin-cos positions -> Transformer
    blocks -> LayerNorm -> linear prediction of each patch's p * p * C pixels.

    Args:
        in_dim: D, the encoder's token width.
        patch_pixels: p * p * C, the values of one patch (any channel count).
        dim: decoder width (paper: 512; 256 is plenty for continued pretraining).
        depth: decoder blocks (paper: 8; 1-4 for a lighter decoder).
        heads: attention heads (paper: 16).
        mlp_ratio: MLP width relative to ``dim``.
    """

    def __init__(
        self,
        in_dim: int,
        patch_pixels: int,
        dim: int = 512,
        depth: int = 8,
        heads: int = 16,
        mlp_ratio: float = 4.0,
    ) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"decoder_dim {dim} must be a multiple of decoder_heads {heads}")
        self.dim = dim
        self.embed = nn.Linear(in_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.blocks = nn.Sequential(
            *[Block(dim, heads, mlp_ratio, qkv_bias=True) for _ in range(depth)]
        )
        self.norm = nn.LayerNorm(dim)
        self.pred = nn.Linear(dim, patch_pixels)
        nn.init.normal_(self.mask_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, latent: Tensor, keep: Tensor, grid: tuple[int, int], n_prefix: int) -> Tensor:
        """
        Args:
            latent: (B, P + N_keep, D) encoder output: P prefix tokens, then the visible patches.
            keep: (B, N_keep) patch indices of the visible tokens (row-major in the h x w grid).
            grid: (h, w) patch grid, N = h * w.
            n_prefix: P, class/register tokens in front.

        Returns:
            (B, N, p * p * C) predicted patches, in patch order.
        """
        x = self.embed(latent)
        b, n = x.shape[0], grid[0] * grid[1]
        patches = self.mask_token.to(x.dtype).expand(b, n, self.dim)
        index = keep.unsqueeze(-1).expand(-1, -1, self.dim)
        patches = patches.scatter(1, index, x[:, n_prefix:])
        patches = patches + sincos_2d(grid, self.dim, x.device).to(x.dtype)
        x = torch.cat([x[:, :n_prefix], patches], dim=1)
        x = self.norm(self.blocks(x))
        return self.pred(x[:, n_prefix:])
