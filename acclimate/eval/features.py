"""Frozen-feature extraction: pooled, CLS, multi-layer (``last{k}``) and patch-token features
of a timm backbone."""

from __future__ import annotations

import logging
from collections.abc import Iterable

import torch
from torch import Tensor, nn

from acclimate.backbones.layout import channels_last_for, like_model
from acclimate.errors import AcclimateError
from acclimate.eval.multilayer import last_k, last_k_features, last_k_problem

log = logging.getLogger(__name__)

# A feature kind: "pooled", "cls", "patch" or "last{k}" (k >= 1; acclimate.eval.multilayer).
FeatureKind = str
VECTOR_KINDS = "pooled, cls or last{k} with k >= 1 (e.g. last4)"


def kind_problem(kind: object, vector: bool = True) -> str | None:
    """What is wrong with a feature kind's name, or None. ``vector``: one (D,) vector per image
    (what probes, kNN and indexes take), so ``patch`` is refused."""
    if kind in ("pooled", "cls") or (isinstance(kind, str) and last_k(kind) is not None):
        return None
    if kind == "patch" and not vector:
        return None
    allowed = VECTOR_KINDS if vector else "pooled, cls, patch or last{k} with k >= 1 (e.g. last4)"
    return f"feature kind {kind!r}: expected {allowed}"


def check_kind(model: nn.Module, kind: FeatureKind, vector: bool = True) -> None:
    """Raise AcclimateError, one line, when ``kind`` is no kind or ``model`` cannot give it."""
    problem = kind_problem(kind, vector)
    k = last_k(kind) if problem is None else None
    if problem is None and k is not None:
        problem = last_k_problem(model, k)
    if problem is None and kind == "cls" and n_prefix_tokens(model) == 0:
        problem = "cls features need a transformer backbone with a CLS token; use pooled"
    if problem:
        raise AcclimateError(problem)


def n_prefix_tokens(model: nn.Module) -> int:
    """Tokens before the patch tokens (CLS + registers) of a timm ViT; 0 for CNNs."""
    return int(getattr(model, "num_prefix_tokens", 0))


def features_of(model: nn.Module, x: Tensor, kind: FeatureKind = "pooled") -> Tensor:
    """Features of a batch.

    x: (B, C, H, W) normalised images. Returns (B, D) for ``pooled`` (timm's
    ``forward_head(pre_logits=True)``: CLS token or average pool, per the model) and ``cls``
    (ViTs only), (B, D') for ``last{k}`` (the last k blocks or stages concatenated:
    :func:`acclimate.eval.multilayer.last_k_features`), (B, N, D) for ``patch`` (ViT patch
    tokens, or a CNN's final feature map flattened to N = h * w positions).
    """
    if kind == "pooled":
        return model.forward_head(model.forward_features(x), pre_logits=True)
    k = last_k(kind)
    if k is not None:
        return last_k_features(model, x, k)
    if kind not in ("cls", "patch"):
        raise AcclimateError(kind_problem(kind, vector=False) or f"unknown feature kind {kind!r}")
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
    loader's dataset were left out. Rows whose features are not finite (an image of huge
    values overflows the network) are left out too, each named in a WARNING and recorded as
    bad (``not finite``) with the loader's dataset (``ImageDataset.report_bad``: its
    ``bad_file_log``), so no NaN row reaches a probe, a kNN bank or an embedding file.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    with channels_last_for(model):  # about 2x faster CNN convolutions (backbones.layout)
        return _extract(model, loader, kind, device, progress, desc)


def _extract(
    model: nn.Module,
    loader: Iterable,
    kind: FeatureKind,
    device: torch.device,
    progress: bool,
    desc: str,
) -> tuple[Tensor, Tensor, Tensor]:
    was_training = model.training
    model.eval()
    feats, labels, indices = [], [], []
    seen = 0
    dataset = getattr(loader, "dataset", None)
    it = loader
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(loader, desc=desc, leave=False)
    try:
        for batch in it:
            images, y = batch[0], batch[1]
            idx = batch[2] if len(batch) > 2 else torch.arange(seen, seen + len(images))
            seen += len(images)
            images = like_model(images.to(device, non_blocking=True), model)
            out = features_of(model, images, kind).float().cpu()
            y, idx = torch.as_tensor(y), torch.as_tensor(idx)
            finite = torch.isfinite(out.reshape(len(out), -1)).all(1)  # one check per batch
            if not bool(finite.all()):
                _report_not_finite(dataset, idx[~finite].tolist(), desc)
                out, y, idx = out[finite], y[finite], idx[finite]
            feats.append(out)
            labels.append(y)
            indices.append(idx)
    finally:
        model.train(was_training)
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
    if not feats or sum(len(f) for f in feats) == 0:
        raise AcclimateError("no images to extract features from")
    return torch.cat(feats), torch.cat(labels).long(), torch.cat(indices).long()


def _report_not_finite(dataset: object, indices: list[int], desc: str) -> None:
    """Name the items whose features are not finite: the dataset's bad-item record when it has
    one (``ImageDataset.report_bad``), else a WARNING."""
    text = "features are not finite (NaN or inf): left out"
    for i in indices:
        report = getattr(dataset, "report_bad", None)
        if report is not None:
            report(int(i), "not finite", f"{desc}: {text}")
        else:
            log.warning("%s: item %d: %s", desc, i, text)


def left_out(loader: Iterable, kept: Tensor) -> dict[str, str]:
    """{item (path): reason} of the items of ``loader``'s dataset that have no row in the
    features (``kept``: the source indices of the rows): unreadable, mostly nodata, too large or
    features not finite. Reasons met in DataLoader worker processes are not seen here and read
    ``unreadable``; the run's bad-file log has them all."""
    dataset = getattr(loader, "dataset", None)
    source = getattr(dataset, "source", None)
    if source is None:
        return {}
    reasons: dict[int, str] = getattr(dataset, "bad", {})
    missing = sorted(set(range(len(source))) - set(kept.tolist()))
    return {source.describe(i): reasons.get(i, "unreadable") for i in missing}


def finite_rows(feats: Tensor, labels: Tensor, name: str = "features") -> tuple[Tensor, Tensor]:
    """(feats, labels) without the rows whose features are not finite (a WARNING counts them):
    the last guard before a probe's L-BFGS or a kNN bank, for features made elsewhere."""
    finite = torch.isfinite(feats.reshape(len(feats), -1)).all(1)
    if bool(finite.all()):
        return feats, labels
    log.warning("%s: left out %d row(s) with NaN or inf features", name, int((~finite).sum()))
    return feats[finite], labels[finite]
