"""The frozen-feature protocol: the same kNN and linear probe for any backbone, so the starting
backbone and the adapted one are measured alike."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from acclimate.data.datamodule import eval_loader
from acclimate.data.readers import DEFAULT_OPTIONS, ReadOptions
from acclimate.data.sources import (
    DataError,
    ImageSource,
    canonical_split,
    list_splits,
    open_source,
)
from acclimate.eval.features import extract_features, finite_rows, kind_problem
from acclimate.eval.knn import knn_accuracy
from acclimate.eval.linear import LinearProbe
from acclimate.eval.sweep import sweep_linear_probe

log = logging.getLogger(__name__)


@dataclass
class EvalSettings:
    """Frozen-feature evaluation: the online kNN monitor and the before/after comparison.

    Args:
        data: a labelled source (class folders, CSV with labels, .npz); default: the training
            source when it is labelled. Without one, runs train but report no accuracy.
        train_split: split the kNN bank and the probe are fitted on.
        test_split: held-out split that is scored; ``auto`` = ``test`` if present, else ``val``;
            a source without splits is split 80/20 at random (seed 0).
        every_n_epochs: online kNN monitor period (0 turns it off).
        knn_k, knn_temperature: weighted kNN (DINO's eval_knn: k=20, T=0.07).
        probe_weight_decays: L2 penalties of the linear probe tried; the best on a stratified
            ``probe_val_fraction`` of the train split is refitted on all of it and scored on
            test (the protocol of ``acclimate evaluate``, so every figure means the same).
        probe_weight_decay: the tie-break among them (the closest wins).
        max_train_images, max_test_images: random subsets (seed 0) to bound evaluation time.
        before_after: measure the starting backbone and the adapted one with the same protocol
            at the end of training (the evidence that adaptation helped).
        batch_size, num_workers: feature-extraction loader.
        pictures: log pictures to TensorBoard with the kNN monitor: CLS attention maps and the
            PCA of patch features as RGB (ViTs; the feature-map PCA for CNNs) of ``n_pictures``
            fixed held-out images, and the embedding projector of ``projector_images`` labelled
            ones. Turn off to save a little time per evaluation.
        reference_size: also measure the starting backbone on the same images resized to this
            side (e.g. 224, the size it was pretrained at), same protocol: the ceiling that an
            adapted model at native resolution can aim at, at a fraction of its inference cost.
            null skips it.
        features: the frozen features every figure is measured on (kNN monitor, before/after,
            the export's probes, ``acclimate evaluate`` and ``embed`` by default, ONNX):
            ``pooled`` (the model's own pooling: CLS token or average pool), ``cls`` (ViTs), or
            ``last{k}``, the last k blocks or stages concatenated (``last4``: DINOv2's linear
            evaluation for ViTs, the CLS tokens of the last 4 blocks plus the mean patch token;
            for CNNs the average pool of each of the last 4 stages). Try ``last4`` when the
            domain is far from the pretraining data: middle layers keep texture that the last
            one abstracts away; it costs a wider probe and index (k + 1 times for ViTs).
    """

    data: str | None = None
    train_split: str = "train"
    test_split: str = "auto"
    every_n_epochs: int = 1
    knn_k: int = 20
    knn_temperature: float = 0.07
    probe_weight_decays: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 1e-1)
    probe_val_fraction: float = 0.2
    probe_weight_decay: float = 1e-3
    max_train_images: int | None = 10000
    max_test_images: int | None = 5000
    before_after: bool = True
    batch_size: int = 128
    num_workers: int = 2
    pictures: bool = True
    n_pictures: int = 4
    projector_images: int = 256
    reference_size: int | None = None
    features: str = "pooled"

    def __post_init__(self) -> None:
        problem = kind_problem(self.features)
        if problem:
            raise ValueError(f"features: {problem}")
        if self.knn_k < 1:
            raise ValueError(f"knn_k must be >= 1, got {self.knn_k}")
        if self.every_n_epochs < 0:
            raise ValueError(f"every_n_epochs must be >= 0, got {self.every_n_epochs}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _limit(source: ImageSource, n: int | None, seed: int = 0) -> ImageSource:
    if n is None or len(source) <= n:
        return source
    rng = np.random.default_rng(seed)
    return source.subset(sorted(rng.choice(len(source), size=n, replace=False).tolist()))


def held_out_split(spec: str, settings: EvalSettings) -> str | None:
    """The split of ``spec`` that evaluation scores (None: a random 20% of a split-less source)."""
    splits = list_splits(spec)
    if not splits:
        return None
    test = settings.test_split
    if test == "auto":
        test = "test" if "test" in splits else "val" if "val" in splits else None
        if test is None:
            raise DataError(
                f"{spec}: evaluation needs a held-out split (test or val); found {splits}"
            )
    return canonical_split(test)


def labelled_splits(
    spec: str,
    channels: int,
    settings: EvalSettings,
    options: ReadOptions = DEFAULT_OPTIONS,
) -> tuple[ImageSource, ImageSource]:
    """Open the (train, test) sources of a labelled evaluation set, subsampled per settings.

    ``options`` (band selection, window, slice axis) must be the model's training ones, so that
    evaluation sees the pixels training saw.
    """
    test = held_out_split(spec, settings)
    if test is not None:
        train_src = open_source(spec, settings.train_split, channels=channels, options=options)
        test_src = open_source(spec, test, channels=channels, options=options)
    else:
        whole = open_source(spec, None, channels=channels, options=options)
        perm = np.random.default_rng(0).permutation(len(whole))
        cut = int(round(0.8 * len(whole)))
        train_src, test_src = whole.subset(sorted(perm[:cut])), whole.subset(sorted(perm[cut:]))
        log.info("%s has no splits: evaluating on a random 80/20 split (seed 0)", spec)
    for src, role in ((train_src, "train"), (test_src, "test")):
        if not src.has_labels:
            raise DataError(
                f"{src.name}: evaluation needs labels (class folders or a label column)"
            )
        if len(src) == 0:
            raise DataError(f"{src.name}: the {role} split of the evaluation data is empty")
    return _limit(train_src, settings.max_train_images), _limit(test_src, settings.max_test_images)


def score_features(
    train: tuple[torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor],
    settings: EvalSettings,
    classes: list[str] | None = None,
) -> tuple[dict[str, float], LinearProbe]:
    """kNN and linear-probe top-1 accuracy from cached features (N, D) and labels (N,)."""
    (xtr, ytr), (xte, yte) = finite_rows(*train, "train"), finite_rows(*test, "test")
    n_classes = int(max(ytr.max(), yte.max()).item()) + 1
    knn = knn_accuracy(xtr, ytr, xte, yte, settings.knn_k, settings.knn_temperature)
    # the probe of `acclimate evaluate`: its L2 penalty chosen on a stratified validation part
    probe, sweep = sweep_linear_probe(
        xtr,
        ytr,
        n_classes,
        settings.probe_weight_decays,
        settings.probe_val_fraction,
        prefer=settings.probe_weight_decay,
        classes=classes,
    )
    metrics = {
        "knn_top1": knn,
        "linear_top1": probe.accuracy(xte, yte),
        "probe_weight_decay": float(sweep["weight_decay"]),
        "n_train": int(len(ytr)),
        "n_test": int(len(yte)),
    }
    return metrics, probe


def evaluate_backbone(
    model: nn.Module,
    train_src: ImageSource,
    test_src: ImageSource,
    transform: Callable[[Any], Any],
    settings: EvalSettings,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> tuple[dict[str, float], LinearProbe]:
    """Extract features (``settings.features``) of both splits and score them (kNN + linear
    probe); the metrics name the kind under ``features``."""
    loaders = [
        eval_loader(s, transform, settings.batch_size, settings.num_workers)
        for s in (train_src, test_src)
    ]
    model = model.to(device)
    train, test = (
        extract_features(model, loader, settings.features, device, progress, f"{role} feats")
        for loader, role in zip(loaders, ("train", "test"), strict=True)
    )
    metrics, probe = score_features(train, test, settings, classes=list(train_src.classes))
    return {**metrics, "features": settings.features}, probe
