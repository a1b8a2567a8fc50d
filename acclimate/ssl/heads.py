"""Projection heads."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils.parametrizations import weight_norm

from acclimate.ssl.distributed import SyncBatchNorm1d


class DINOHead(nn.Module):
    """MLP -> L2-normalised bottleneck -> weight-normalised prototype layer (Caron et al. 2021).

    Args:
        in_dim: D, the backbone's feature dimension.
        out_dim: K, number of prototypes (paper: 65536; 2048-16384 suits small domain sets).
        hidden_dim: width of the MLP.
        bottleneck_dim: width of the L2-normalised bottleneck.
        n_layers: linear layers in the MLP (>= 1).
        use_bn: BatchNorm between MLP layers (paper: off for ViT); statistics over the global
            batch of every rank (`SyncBatchNorm1d`), as in the paper's code.
        norm_last_layer: fix the prototype norms to 1 (paper: True; False trains faster but less
            stably).
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        n_layers: int = 3,
        use_bn: bool = False,
        norm_last_layer: bool = True,
    ) -> None:
        super().__init__()
        if n_layers < 1:
            raise ValueError(f"head_layers must be at least 1, got {n_layers}")
        dims = [in_dim] + [hidden_dim] * (n_layers - 1) + [bottleneck_dim]
        layers: list[nn.Module] = []
        for i in range(n_layers):
            layers.append(nn.Linear(dims[i], dims[i + 1]))
            if i < n_layers - 1:
                if use_bn:
                    layers.append(SyncBatchNorm1d(dims[i + 1]))
                layers.append(nn.GELU())
        self.mlp = nn.Sequential(*layers)
        for m in self.mlp.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.last_layer = weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        with torch.no_grad():
            self.last_layer.parametrizations.weight.original0.fill_(1.0)
        if norm_last_layer:
            self.last_layer.parametrizations.weight.original0.requires_grad_(False)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, D) features -> (B, K) logits."""
        x = nn.functional.normalize(self.mlp(x), dim=-1, p=2)
        return self.last_layer(x)


class MLPHead(nn.Module):
    """Projector / predictor MLP of the contrastive and BYOL-style methods, written once.

    ``n_layers`` linear layers; between them BatchNorm (optional) and ReLU. SimCLR (Chen et al.
    2020): 2 layers, BN. MoCo v3 (Chen, Xie, He 2021): projector 3 layers (ViT; 2 for ResNet)
    with ``last_bn`` (no affine), predictor 2 layers. BYOL (Grill et al. 2020): 2 layers, BN.

    Args:
        in_dim: input width (the backbone's feature dimension for a projector).
        hidden_dim: width of the hidden layers (papers: 2048-4096).
        out_dim: output width (papers: 128-256).
        n_layers: linear layers (>= 1).
        use_bn: BatchNorm after every hidden linear layer.
        last_bn: BatchNorm without affine after the last layer (MoCo v3's projector).
        sync_bn: compute BatchNorm statistics over the global batch of every rank
            (`SyncBatchNorm1d`, CPU and GPU); the papers do. Identical at world size 1.
    """

    def __init__(
        self,
        in_dim: int,
        hidden_dim: int,
        out_dim: int,
        n_layers: int = 2,
        use_bn: bool = True,
        last_bn: bool = False,
        sync_bn: bool = True,
    ) -> None:
        super().__init__()
        if n_layers < 1:
            raise ValueError(f"MLP head layers must be at least 1, got {n_layers}")
        norm = SyncBatchNorm1d if sync_bn else nn.BatchNorm1d
        dims = [in_dim] + [hidden_dim] * (n_layers - 1) + [out_dim]
        layers: list[nn.Module] = []
        for i in range(n_layers):
            last = i == n_layers - 1
            bias = not (last and last_bn) and not (use_bn and not last)  # BN follows: no bias
            layers.append(nn.Linear(dims[i], dims[i + 1], bias=bias))
            if not last:
                if use_bn:
                    layers.append(norm(dims[i + 1]))
                layers.append(nn.ReLU(inplace=True))
            elif last_bn:
                layers.append(norm(dims[i + 1], affine=False))
        self.mlp = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, in_dim) -> (B, out_dim)."""
        return self.mlp(x)
