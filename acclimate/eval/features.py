"""Frozen-feature extraction: pooled, CLS and patch-token features of a timm backbone."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Literal

import torch
from torch import Tensor, nn

from acclimate.errors import AcclimateError

log = logging.getLogger(__name__)

FeatureKind = Literal["pooled", "cls", "patch"]


def n_prefix_tokens(model: nn.Module) -> int:
    """Tokens before the patch tokens (CLS + registers) of a timm ViT; 0 for CNNs."""
    return int(getattr(model, "num_prefix_tokens", 0))


def features_of(model: nn.Module, x: Tensor, kind: FeatureKind = "pooled") -> Tensor:
    """Features of a batch.

    x: (B, C, H, W) normalised images. Returns (B, D) for ``pooled`` (timm's
    ``forward_head(pre_logits=True)``: CLS token or average pool, per the model) and ``cls``
    (ViTs only), (B, N, D) for ``patch`` (ViT patch tokens, or a CNN's final feature map
    flattened to N = h * w positions).
    """
    if kind == "pooled":
        return model.forward_head(model.forward_features(x), pre_logits=True)
    tokens = model.forward_features(x)
    if tokens.ndim == 4:  # CNN feature map (B, D, h, w)
        if kind == "cls":
            raise AcclimateError("cls features need a transformer backbone; use pooled for CNNs")
        return tokens.flatten(2).transpose(1, 2)
    if kind == "cls":
        if n_prefix_tokens(model) == 0:
            raise AcclimateError("this transformer has no CLS token; use pooled features")
        return tokens[:, 0]
    return tokens[:, n_prefix_tokens(model) :]


def extract_features(
    model: nn.Module,
    loader: Iterable,
    kind: FeatureKind = "pooled",
    device: torch.device | str | None = None,
    progress: bool = False,
    desc: str = "features",
) -> tuple[Tensor, Tensor]:
    """Run ``model`` in eval mode over ``loader`` of (images, labels[, indices]) batches.

    Returns features (N, D) (or (N, T, D) for patch) as float32 on the CPU, and labels (N,).
    The model's train/eval mode is restored afterwards. Unreadable images left out by
    ``eval_loader`` are absent from both (see :func:`extract_features_indexed`).
    """
    feats, labels, _ = extract_features_indexed(model, loader, kind, device, progress, desc)
    return feats, labels


@torch.no_grad()
def extract_features_indexed(
    model: nn.Module,
    loader: Iterable,
    kind: FeatureKind = "pooled",
    device: torch.device | str | None = None,
    progress: bool = False,
    desc: str = "features",
) -> tuple[Tensor, Tensor, Tensor]:
    """Like :func:`extract_features`, plus the source index (N,) of every row.

    Batches of ``eval_loader`` are (images, labels, indices) with unreadable items left out;
    (images, labels) batches are numbered in order. A WARNING tells how many items of the
    loader's dataset were left out.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    feats, labels, indices = [], [], []
    seen = 0
    it = loader
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(loader, desc=desc, leave=False)
    try:
        for batch in it:
            images, y = batch[0], batch[1]
            idx = batch[2] if len(batch) > 2 else torch.arange(seen, seen + len(images))
            seen += len(images)
            out = features_of(model, images.to(device, non_blocking=True), kind)
            feats.append(out.float().cpu())
            labels.append(torch.as_tensor(y))
            indices.append(torch.as_tensor(idx))
    finally:
        model.train(was_training)
    dataset = getattr(loader, "dataset", None)
    total = len(dataset) if hasattr(dataset, "__len__") else seen  # type: ignore[arg-type]
    if total > seen:
        name = getattr(getattr(dataset, "source", None), "name", "the source")
        log.warning(
            "%s: left out %d unreadable image(s) of %d (%s); features cover %d",
            desc,
            total - seen,
            total,
            name,
            seen,
        )
    if not feats:
        raise AcclimateError("no images to extract features from")
    return torch.cat(feats), torch.cat(labels).long(), torch.cat(indices).long()
