"""The LoRA layer (Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models", ICLR 2022):
a frozen ``base_layer`` plus a trainable low-rank update, ``W x + (alpha / r) * B A x``."""

from __future__ import annotations

import copy
import math

import torch
from torch import Tensor, nn


class LoRALayer(nn.Module):
    """Wrap an ``nn.Linear`` or ``nn.Conv2d`` (groups = 1); add ``scaling * B(A(dropout(x)))``.

    For a linear layer ``A`` is (r, in) and ``B`` is (out, r); for a convolution ``A`` has the
    base kernel, stride, padding and dilation with r output channels and ``B`` is a 1x1
    convolution, so ``B A`` is again a kernel of the base shape and merges exactly. ``B`` starts at
    zero: the wrapped layer first computes exactly what the base layer did.

    Args:
        base_layer: the pretrained layer; kept as ``base_layer`` (its tensors keep their
            names under ``base_layer.``). Freezing it is the policy's job (`apply_adapter`).
        rank: r, the rank of the update (ExPLoRA: 8 to 64).
        alpha: scale numerator; the update is multiplied by ``alpha / rank``.
        dropout: dropout on the input of the low-rank path only.
    """

    def __init__(self, base_layer: nn.Module, rank: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        if rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {rank}")
        self.base_layer = base_layer
        self.rank, self.alpha, self.scaling = rank, alpha, alpha / rank
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        kind = {"device": base_layer.weight.device, "dtype": base_layer.weight.dtype}
        if isinstance(base_layer, nn.Linear):
            self.lora_A = nn.Linear(base_layer.in_features, rank, bias=False, **kind)
            self.lora_B = nn.Linear(rank, base_layer.out_features, bias=False, **kind)
        elif type(base_layer) is nn.Conv2d and base_layer.groups == 1:
            c = base_layer
            self.lora_A = nn.Conv2d(
                c.in_channels, rank, c.kernel_size, c.stride, c.padding, c.dilation,
                bias=False, padding_mode=c.padding_mode, **kind,
            )  # fmt: skip
            self.lora_B = nn.Conv2d(rank, c.out_channels, 1, bias=False, **kind)
        else:
            raise TypeError(
                f"LoRA wraps nn.Linear and plain nn.Conv2d with groups=1, not {base_layer!r}"
            )
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)

    @property
    def weight(self) -> Tensor:
        """The base weight (for code that reads ``layer.weight``; the merged one is `delta`)."""
        return self.base_layer.weight

    @property
    def bias(self) -> Tensor | None:
        return self.base_layer.bias

    def delta_weight(self) -> Tensor:
        """``scaling * B A`` in the base weight's shape: (out, in) or (out, in, kH, kW)."""
        a, b = self.lora_A.weight.double(), self.lora_B.weight.double()
        # conv: (out, r, 1, 1) x (r, in, kH, kW) -> (out, in, kH, kW)
        delta = b @ a if a.ndim == 2 else torch.einsum("or,rikl->oikl", b[:, :, 0, 0], a)
        return (delta * self.scaling).to(self.base_layer.weight.dtype)

    def forward(self, x: Tensor) -> Tensor:
        """x: (..., in) or (B, in, H, W) -> the base layer's output shape."""
        return self.base_layer(x) + self.lora_B(self.lora_A(self.lora_dropout(x))) * self.scaling

    def merged(self) -> nn.Module:
        """A plain copy of the base layer holding ``W + scaling * B A`` (and the base bias)."""
        plain = copy.deepcopy(self.base_layer)
        with torch.no_grad():
            plain.weight.add_(self.delta_weight())
        return plain

    def extra_repr(self) -> str:
        return f"rank={self.rank}, alpha={self.alpha}"
