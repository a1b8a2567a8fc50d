"""Multi-layer features ``last{k}``: pooled features of a backbone's last k blocks (ViTs) or
stages (CNNs), concatenated, from timm's own ``forward_intermediates``.

The ViT form is DINOv2's linear evaluation (Oquab et al., 2023, "DINOv2: Learning Robust Visual
Features without Supervision", section 7.1; ``create_linear_input`` in dinov2's
``eval/linear.py`` with ``n_last_blocks=4, avgpool=True``): the CLS token of each of the last k
blocks, each after the final norm, then the average of the last block's patch tokens, so
(B, (k + 1) * D). A CNN (and a transformer without a class token, or a hierarchical one such as
Swin) gives the global average pool of each of its last k stage outputs, so (B, sum of those
stages' widths). Middle layers keep texture and layout that the last one abstracts away, which
is often what a new domain needs from a frozen backbone.

The stages are those timm's ``forward_intermediates`` returns (its ``feature_info``: a ResNet's
stem and four layers; an EfficientNet's block stages, before its final 1x1 ``conv_head``, so
there ``last1`` differs from ``pooled``). The kind is metadata: an export stays a plain timm
folder, and :func:`timm_code` gives the lines that compute it with timm alone.
"""

from __future__ import annotations

import inspect
import re

import torch
from torch import Tensor, nn

from acclimate.errors import AcclimateError

LAST = re.compile(r"last([1-9][0-9]*)")


def last_k(kind: str) -> int | None:
    """k of a ``last{k}`` feature kind (``last4`` -> 4), else None."""
    found = LAST.fullmatch(kind) if isinstance(kind, str) else None
    return int(found.group(1)) if found else None


def uses_class_token(model: nn.Module) -> bool:
    """Whether ``last{k}`` of ``model`` takes CLS tokens (a ViT with a class token whose
    ``forward_intermediates`` returns prefix tokens) rather than pooled feature maps."""
    has_cls = getattr(model, "has_class_token", getattr(model, "cls_token", None) is not None)
    fi = getattr(model, "forward_intermediates", None)
    return bool(has_cls) and fi is not None and _takes(fi, "return_prefix_tokens")


def _takes(fn: object, name: str) -> bool:
    return name in inspect.signature(fn).parameters  # type: ignore[arg-type]


def n_layers(model: nn.Module) -> int | None:
    """Blocks or stages that ``forward_intermediates`` can return (timm's ``feature_info``)."""
    info = getattr(model, "feature_info", None)
    return len(info) if isinstance(info, (list, tuple)) and info else None


def last_k_problem(model: nn.Module, k: int) -> str | None:
    """Why ``model`` cannot give ``last{k}`` features, or None."""
    if not hasattr(model, "forward_intermediates"):
        return f"{type(model).__name__} has no forward_intermediates in timm: use pooled features"
    n = n_layers(model)
    if n is not None and k > n:
        what = "blocks" if uses_class_token(model) else "stages"
        return f"last{k}: the backbone has {n} {what}; choose last1 to last{n}"
    return None


def last_k_features(model: nn.Module, x: Tensor, k: int) -> Tensor:
    """x: (B, C, H, W) normalised images -> (B, (k + 1) * D) for a ViT with a class token (CLS
    of each of the last k blocks after the final norm, then the mean patch token of the last),
    else (B, sum of the widths of the last k stages) (global average pool of each)."""
    _check(model, k)
    return torch.cat(_pool(model, _intermediates(model, x, k, only=True)), dim=1)


def pooled_and_last_k(model: nn.Module, x: Tensor, k: int) -> tuple[Tensor, list[Tensor]]:
    """One forward for both: x (B, C, H, W) -> (pooled (B, D) as ``model(x)``, the parts of
    :func:`last_k_features` before concatenation: k + 1 tensors (B, D) for a ViT with a class
    token, else k tensors (B, C_i))."""
    _check(model, k)
    final, maps = _intermediates(model, x, k, only=False)
    return model.forward_head(final, pre_logits=True), _pool(model, maps)


def last_k_widths(model: nn.Module, k: int) -> list[int]:
    """Widths of the parts of :func:`pooled_and_last_k` (from timm's ``feature_info``)."""
    _check(model, k)
    widths = [int(info["num_chs"]) for info in model.feature_info[-k:]]
    return [*widths, widths[-1]] if uses_class_token(model) else widths


def _check(model: nn.Module, k: int) -> None:
    problem = last_k_problem(model, k)
    if problem:
        raise AcclimateError(problem)


def _intermediates(model: nn.Module, x: Tensor, k: int, only: bool) -> object:
    extra = {"return_prefix_tokens": True} if uses_class_token(model) else {}
    return model.forward_intermediates(x, indices=k, norm=True, intermediates_only=only, **extra)


def _pool(model: nn.Module, maps: list) -> list[Tensor]:
    if uses_class_token(model):  # k x ((B, D, h, w) patch tokens, (B, prefix, D) CLS + registers)
        return [prefix[:, 0] for _, prefix in maps] + [maps[-1][0].mean((2, 3))]
    return [m.mean((2, 3)) for m in maps]  # k x (B, C_i, h_i, w_i)


def timm_code(kind: str, class_token: bool) -> str:
    """Python lines that compute features of ``kind`` from ``model`` (created with
    ``timm.create_model(..., num_classes=0)``) and a preprocessed batch ``x``: plain timm."""
    k = last_k(kind)
    if k is not None and class_token:
        return (
            f"maps = model.forward_intermediates(x, indices={k}, norm=True, "
            "return_prefix_tokens=True, intermediates_only=True)\n"
            "features = torch.cat([prefix[:, 0] for _, prefix in maps] "
            "+ [maps[-1][0].mean((2, 3))], 1)"
        )
    if k is not None:
        return (
            f"maps = model.forward_intermediates(x, indices={k}, norm=True, "
            "intermediates_only=True)\n"
            "features = torch.cat([m.mean((2, 3)) for m in maps], 1)"
        )
    if kind == "cls":
        return "features = model.forward_features(x)[:, 0]"
    return "features = model(x)  # forward_head(forward_features(x), pre_logits=True)"


def describe(kind: str, class_token: bool) -> str:
    """What features of ``kind`` are, in words (for the model card)."""
    k = last_k(kind)
    if k is not None and class_token:
        return (
            f"the CLS tokens of the last {k} blocks (each after the final norm) and the mean "
            "patch token of the last block, concatenated (DINOv2's linear evaluation)"
        )
    if k is not None:
        return (
            f"the global average pool of each of the last {k} stage (or block) outputs, "
            "concatenated"
        )
    if kind == "cls":
        return "the CLS token of the last block (after the final norm)"
    return "the model's own pooled features (its CLS token or average pool)"
