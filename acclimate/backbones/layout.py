"""Memory layout: convolution weights and activations in channels-last (NHWC) order.

oneDNN (CPU) and cuDNN (GPU tensor cores) run convolutions natively in NHWC; in the default
NCHW layout each convolution pays layout reorders. Measured here for EfficientNet-Lite0 on 2 CPU
cores, a forward of 128 images: 2.0 s -> 1.1 s at 128 px, 7.5 s -> 3.8 s at 224 px. The values
are the same up to float rounding (another summation order).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn


def has_convolutions(module: nn.Module) -> bool:
    """Whether ``module`` holds 4-D (2-D convolution) weights."""
    return any(p.ndim == 4 for p in module.parameters())


def is_channels_last(module: nn.Module) -> bool:
    """Whether the first 4-D weight of ``module`` is stored channels-last."""
    for p in module.parameters():
        if p.ndim == 4:
            return p.is_contiguous(memory_format=torch.channels_last)
    return False


def channels_last(module: nn.Module) -> nn.Module:
    """Store the 4-D weights of ``module`` channels-last, in place; returns it."""
    return module.to(memory_format=torch.channels_last)


def like_model(images: Tensor, module: nn.Module) -> Tensor:
    """``images`` (B, C, H, W) in the layout of ``module``'s convolutions."""
    if images.ndim == 4 and is_channels_last(module):
        return images.contiguous(memory_format=torch.channels_last)
    return images


@contextmanager
def channels_last_for(module: nn.Module) -> Iterator[nn.Module]:
    """Run ``module`` channels-last for the duration (a CNN), then restore its layout."""
    if not has_convolutions(module) or is_channels_last(module):
        yield module
        return
    channels_last(module)
    try:
        yield module
    finally:
        module.to(memory_format=torch.contiguous_format)
