"""``trainer.precision: auto``: bf16 autocast where it pays on this machine, fp32 elsewhere.

Whether bf16 autocast pays depends on the hardware and on the network, and the difference is
large both ways. Measured on 2 CPU cores (``bench/bench_vs_lightly.py``, ``bench/README.md``):
on an AMD EPYC (Zen 5, AVX-512 BF16) a bf16 matmul runs 4x a float32 one and a ViT-S/16 DINO
step 2.2-2.4x faster under autocast; on an Intel Xeon with AVX-512 BF16 but no AMX the same
step ran at 0.55x; EfficientNet-Lite0 ran at 0.5x on both (its depthwise convolutions have no
fast bf16 kernel). So ``auto`` decides per run:

* on a CUDA GPU that supports bf16: ``bf16-mixed``;
* on the CPU, for networks that are transformers (no convolution but a patch embedding) at
  least `MIN_WIDTH` wide, when a bf16 matmul of their width runs at least `MIN_SPEEDUP` x a
  float32 one here (a probe of 0.1-0.5 s): ``bf16-mixed``;
* otherwise ``32-true``.

Autocast keeps the weights, the optimiser and the losses' softmaxes in float32; only the matmuls
and convolutions run in bf16 (Kalamkar et al., "A Study of BFLOAT16 for Deep Learning
Training", 2019). The decision and the probe's figures go to the run's log. Every process
decides for itself (before its Trainer exists, so without a collective): the ranks of one
machine see the same hardware; ranks that chose differently still train one model correctly,
since gradients and weights stay float32.
"""

from __future__ import annotations

import logging
import statistics
import time

import torch
from torch import nn

log = logging.getLogger(__name__)

AUTO = "auto"
MIN_SPEEDUP = 2.0  # a bf16 matmul this much faster than fp32: the whole ViT step gains (>= 1.3x)
MIN_WIDTH = 192  # ViT-Ti's; narrower test-sized models: autocast's casts outweigh their matmuls


def is_transformer(module: nn.Module) -> bool:
    """Whether ``module`` runs on matmuls: it holds at most one 4-D (convolution) weight, a ViT's
    patch embedding. CNNs and hybrids (ConvNeXt, EfficientNet) hold many."""
    return sum(1 for p in module.parameters() if p.ndim == 4) <= 1


def model_width(module: nn.Module) -> int:
    """The in-features of ``module``'s most common ``nn.Linear`` (a ViT's embedding dimension:
    its blocks' qkv, projection and first MLP layers take it); 256 without any."""
    widths = [m.in_features for m in module.modules() if isinstance(m, nn.Linear)]
    return statistics.mode(widths) if widths else 256


def bf16_matmul_speedup(width: int, tokens: int = 2048, repeats: int = 3) -> float:
    """float32 time / bf16 time of a (tokens, width) @ (width, 4 * width) matmul on the CPU (a
    ViT block's MLP), medians of ``repeats`` after one untimed call each."""

    def seconds(a: torch.Tensor, b: torch.Tensor) -> float:
        a @ b
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    g = torch.Generator().manual_seed(0)
    a = torch.randn(tokens, width, generator=g)
    b = torch.randn(width, 4 * width, generator=g)
    return seconds(a, b) / seconds(a.bfloat16(), b.bfloat16())


def on_cuda(accelerator: str) -> bool:
    """Whether a run with this ``trainer.accelerator`` trains on a CUDA GPU here."""
    return accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()


def resolve_precision(precision: str, accelerator: str, networks: list[nn.Module]) -> str:
    """``trainer.precision`` for Lightning: ``precision`` itself unless it is ``auto``, else the
    choice of this module's docstring for ``networks`` (the ones a step runs) on this machine,
    logged with its reason."""
    if precision != AUTO:
        return precision
    if on_cuda(accelerator):
        has_bf16 = torch.cuda.is_bf16_supported()
        chosen = "bf16-mixed" if has_bf16 else "32-true"
        why = f"{torch.cuda.get_device_name()} {'supports' if has_bf16 else 'lacks'} bf16"
    elif not networks:
        chosen, why = "32-true", "the networks are not known (`TrainerSettings.for_networks`)"
    elif not all(is_transformer(n) for n in networks):
        chosen, why = "32-true", "a CNN on the CPU (bf16 convolutions are slower there)"
    elif (width := max(model_width(n) for n in networks)) < MIN_WIDTH:
        chosen, why = "32-true", f"a transformer of width {width} < {MIN_WIDTH} on the CPU"
    else:
        speedup = bf16_matmul_speedup(width)
        chosen = "bf16-mixed" if speedup >= MIN_SPEEDUP else "32-true"
        why = (
            f"a transformer on the CPU; a bf16 matmul of width {width} runs {speedup:.1f}x "
            f"float32 here (bf16 from {MIN_SPEEDUP:.1f}x)"
        )
    log.info("trainer.precision auto -> %s: %s", chosen, why)
    return chosen
