"""The frozen-feature protocol: one way to measure a backbone, for the starting backbone and the
adapted one alike, so that every figure answers one question (did adaptation help, by how much).

The protocol (:class:`Protocol`): open the train split and the held-out split of a labelled source
(a random 80/20 split, seed 0, of a source without splits), draw at most ``max_train_images`` /
``max_test_images`` of them (seed 0), extract frozen features of one kind, then score

- a weighted kNN (Wu et al. 2018, "Unsupervised Feature Learning via Non-Parametric Instance
  Discrimination", as in DINO's ``eval_knn.py``: cosine similarity, k=20, T=0.07), and
- a linear probe (multinomial logistic regression, :mod:`acclimate.eval.linear`) whose L2 penalty
  is chosen on a stratified validation part of the train split (:mod:`acclimate.eval.sweep`),
  refitted on all of it and scored once on the held-out split.

Its users: training's before/after (:func:`evaluate_backbone`) and kNN monitor
(``acclimate.callbacks.KNNMonitor``), ``acclimate probe`` (``acclimate.export.probes``),
``acclimate evaluate`` (``acclimate.eval.report``, which adds its own measurements on the same
features and probe) and the model card (``acclimate.export.card``, via :meth:`Protocol.describe`).
:class:`EvalSettings`, the recipe's ``eval:`` section, is the protocol plus training's switches.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from acclimate.data.datamodule import eval_loader
from acclimate.data.readers import DEFAULT_OPTIONS, ReadOptions
from acclimate.data.sources import (
    DataError,
    ImageSource,
    canonical_split,
    list_splits,
    open_source,
)
from acclimate.eval.features import extract_features_indexed, finite_rows, kind_problem, left_out
from acclimate.eval.knn import knn_accuracy
from acclimate.eval.linear import LinearProbe
from acclimate.eval.sweep import sweep_linear_probe

log = logging.getLogger(__name__)

Features = tuple[Tensor, Tensor]  # (features (N, D), labels (N,))

UNSPLIT_TEST_FRACTION = 0.2  # held out (seed 0) of a labelled source without splits


@dataclass
class Protocol:
    """How every accuracy of acclimate is measured (see the module docstring).

    Args:
        train_split: split the kNN bank and the probe are fitted on.
        test_split: held-out split that is scored; ``auto`` = ``test`` if present, else ``val``;
            a source without splits is split 80/20 at random (seed 0).
        features: the frozen features measured: ``pooled`` (the model's own pooling: CLS token
            or average pool), ``cls`` (ViTs), or ``last{k}``, the last k blocks or stages
            concatenated (``last4``: DINOv2's linear evaluation for ViTs, the CLS tokens of the
            last 4 blocks plus the mean patch token; for CNNs the average pool of each of the
            last 4 stages). Try ``last4`` when the domain is far from the pretraining data:
            middle layers keep texture that the last one abstracts away; it costs a wider probe
            and index (k + 1 times for ViTs).
        knn_k, knn_temperature: weighted kNN (DINO's eval_knn: k=20, T=0.07); ``knn_top1``.
        probe_weight_decays: L2 penalties of the linear probe tried; the best on a stratified
            ``probe_val_fraction`` of the train split is refitted on all of it and scored on
            the held-out split (``linear_top1``).
        probe_val_fraction: share of each class of the train split held out to choose it.
        probe_weight_decay: the tie-break among them (the closest, on a log scale, wins).
        max_train_images, max_test_images: random subsets (seed 0) to bound evaluation time.
        batch_size, num_workers: feature-extraction loader (no effect on the figures).
    """

    train_split: str = "train"
    test_split: str = "auto"
    features: str = "pooled"
    knn_k: int = 20
    knn_temperature: float = 0.07
    probe_weight_decays: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 1e-1)
    probe_val_fraction: float = 0.2
    probe_weight_decay: float = 1e-3
    max_train_images: int | None = 10000
    max_test_images: int | None = 5000
    batch_size: int = 128
    num_workers: int = 2

    def __post_init__(self) -> None:
        problem = kind_problem(self.features)
        if problem:
            raise ValueError(f"features: {problem}")
        if self.knn_k < 1:
            raise ValueError(f"knn_k must be >= 1, got {self.knn_k}")
        if len(self.probe_weight_decays) == 0:
            raise ValueError("probe_weight_decays must not be empty")
        if not 0.0 < self.probe_val_fraction < 1.0:
            raise ValueError(f"probe_val_fraction must be in (0, 1), got {self.probe_val_fraction}")
        self.probe_weight_decays = tuple(float(wd) for wd in self.probe_weight_decays)

    def as_record(self) -> dict[str, Any]:
        """The protocol's own fields as JSON values: what ``metrics.json``, a probe's JSON and
        the model card record (a subclass's other fields are left out)."""
        return {f.name: _plain(getattr(self, f.name)) for f in fields(Protocol)}

    @classmethod
    def from_record(cls, record: dict[str, Any] | None) -> Protocol:
        """A protocol from a record or a recipe's ``eval:`` section (other keys are ignored;
        missing ones take the defaults)."""
        names = {f.name for f in fields(Protocol)}
        return Protocol(**{k: v for k, v in (record or {}).items() if k in names})

    def describe(self) -> str:
        """The protocol in one sentence (for the model card and reports)."""
        wds = ", ".join(f"{wd:g}" for wd in self.probe_weight_decays)
        test = "test, else val" if self.test_split == "auto" else f"`{self.test_split}`"
        limits = " and ".join(
            f"{'all' if n is None else n} {role}"
            for n, role in ((self.max_train_images, "train"), (self.max_test_images, "test"))
        )
        return (
            f"frozen `{self.features}` features; weighted kNN (k={self.knn_k}, "
            f"T={self.knn_temperature:g}) and a linear probe whose L2 penalty ({wds}) is chosen on "
            f"a stratified {self.probe_val_fraction:.0%} of the `{self.train_split}` split (ties "
            f"to {self.probe_weight_decay:g}), refitted on all of it and scored once on the "
            f"held-out split ({test}); at most {limits} images (random, seed 0)"
        )


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


@dataclass
class EvalSettings(Protocol):
    """The recipe's ``eval:`` section: the protocol (:class:`Protocol`: splits, features, kNN,
    probe, image limits) for the online kNN monitor and the before/after comparison, and when
    training runs them.

    Args:
        data: a labelled source (class folders, CSV with labels, .npz); default: the training
            source when it is labelled. Without one, runs train but report no accuracy.
        every_n_epochs: online kNN monitor period (0 turns it off).
        before_after: measure the starting backbone and the adapted one with the same protocol
            at the end of training (the evidence that adaptation helped).
        pictures: log pictures to TensorBoard with the kNN monitor: CLS attention maps and the
            PCA of patch features as RGB (ViTs; the feature-map PCA for CNNs) of ``n_pictures``
            fixed held-out images, and the embedding projector of ``projector_images`` labelled
            ones. Turn off to save a little time per evaluation.
        reference_size: also measure the starting backbone on the same images resized to this
            side (e.g. 224, the size it was pretrained at), same protocol: the ceiling that an
            adapted model at native resolution can aim at, at a fraction of its inference cost.
            null skips it.
    """

    data: str | None = None
    every_n_epochs: int = 1
    before_after: bool = True
    pictures: bool = True
    n_pictures: int = 4
    projector_images: int = 256
    reference_size: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.every_n_epochs < 0:
            raise ValueError(f"every_n_epochs must be >= 0, got {self.every_n_epochs}")


# ----------------------------------------------------------------------------- the splits


def held_out_split(spec: str, protocol: Protocol) -> str | None:
    """The split of ``spec`` that evaluation scores (None: a random 20% of a split-less source)."""
    splits = list_splits(spec)
    if not splits:
        return None
    test = protocol.test_split
    if test == "auto":
        test = "test" if "test" in splits else "val" if "val" in splits else None
        if test is None:
            raise DataError(
                f"{spec}: evaluation needs a held-out split (test or val); found {splits}"
            )
    return canonical_split(test)


def _limit(source: ImageSource, n: int | None, seed: int = 0) -> ImageSource:
    if n is None or len(source) <= n:
        return source
    rng = np.random.default_rng(seed)
    return source.subset(sorted(rng.choice(len(source), size=n, replace=False).tolist()))


def labelled_splits(
    spec: str,
    channels: int,
    protocol: Protocol,
    options: ReadOptions = DEFAULT_OPTIONS,
) -> tuple[ImageSource, ImageSource]:
    """Open the (train, test) sources of a labelled evaluation set, subsampled per protocol.

    ``options`` (band selection, window, slice axis) must be the model's training ones, so that
    evaluation sees the pixels training saw.
    """
    test = held_out_split(spec, protocol)
    if test is not None:
        train_src = open_source(spec, protocol.train_split, channels=channels, options=options)
        test_src = open_source(spec, test, channels=channels, options=options)
    else:
        whole = open_source(spec, None, channels=channels, options=options)
        perm = np.random.default_rng(0).permutation(len(whole))
        cut = int(round((1 - UNSPLIT_TEST_FRACTION) * len(whole)))
        train_src, test_src = whole.subset(sorted(perm[:cut])), whole.subset(sorted(perm[cut:]))
        log.info("%s has no splits: evaluating on a random 80/20 split (seed 0)", spec)
    for src, role in ((train_src, "train"), (test_src, "test")):
        if not src.has_labels:
            raise DataError(
                f"{src.name}: evaluation needs labels (class folders or a label column)"
            )
        if len(src) == 0:
            raise DataError(f"{src.name}: the {role} split of the evaluation data is empty")
    return _limit(train_src, protocol.max_train_images), _limit(test_src, protocol.max_test_images)


class SplitFeatures(tuple):
    """(features (N, D), labels (N,)) of one split, as ``Features``, plus ``left_out``: the
    items of the split that have no row, {path: reason} (unreadable, nodata, too large, features
    not finite), which ``acclimate evaluate`` lists in its metrics."""

    left_out: dict[str, str]

    def __new__(
        cls, feats: Tensor, labels: Tensor, left_out: dict[str, str] | None = None
    ) -> SplitFeatures:
        self = super().__new__(cls, (feats, labels))
        self.left_out = dict(left_out or {})
        return self


def split_features(
    model: nn.Module,
    sources: tuple[ImageSource, ImageSource],
    transform: Callable[[Any], Any],
    protocol: Protocol,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> tuple[SplitFeatures, SplitFeatures]:
    """Features of ``protocol.features`` (pooled, cls, ``last{k}``) of a (train, test) pair of
    sources, in eval mode, on ``device`` (default: the model's), loaded with the protocol's
    batch size and workers; items without a row (unreadable, nodata, features not finite) are
    named in each split's ``left_out``."""
    if device is not None:
        model = model.to(device)
    out = []
    for src, role in zip(sources, ("train", "test"), strict=True):
        loader = eval_loader(src, transform, protocol.batch_size, protocol.num_workers)
        feats, labels, kept = extract_features_indexed(
            model, loader, protocol.features, device, progress, f"{role} feats"
        )
        out.append(SplitFeatures(feats, labels, left_out(loader, kept)))
    return out[0], out[1]


# ----------------------------------------------------------------------------- the scores


@dataclass
class Scores:
    """What the protocol measures on one (train, test) pair of features.

    ``train``/``test``: the finite rows the scores are computed on; ``sweep``: the probe's
    choice, ``{"weight_decay": chosen, "val_top1": {wd: accuracy}, "n_val": ...}``.
    """

    knn_top1: float
    linear_top1: float
    probe: LinearProbe
    sweep: dict[str, Any]
    n_classes: int
    train: Features
    test: Features

    def metrics(self) -> dict[str, float]:
        """The headline figures (training's before/after, ``acclimate probe``)."""
        return {
            "knn_top1": self.knn_top1,
            "linear_top1": self.linear_top1,
            "probe_weight_decay": float(self.sweep["weight_decay"]),
            "n_train": int(len(self.train[1])),
            "n_test": int(len(self.test[1])),
        }


def protocol_knn(train: Features, test: Features, protocol: Protocol) -> float:
    """The protocol's kNN top-1 (k = ``knn_k``, T = ``knn_temperature``) of cached features."""
    (xtr, ytr), (xte, yte) = finite_rows(*train, "train"), finite_rows(*test, "test")
    return knn_accuracy(xtr, ytr, xte, yte, protocol.knn_k, protocol.knn_temperature)


def protocol_scores(
    train: Features, test: Features, protocol: Protocol, classes: Sequence[str] | None = None
) -> Scores:
    """kNN and linear-probe top-1 of cached features (N, D) and labels (N,): the one place
    where ``knn_top1`` and ``linear_top1`` are computed. The probe has one output per class of
    ``classes`` (or of the labels, when more)."""
    train, test = finite_rows(*train, "train"), finite_rows(*test, "test")
    (xtr, ytr), (xte, yte) = train, test
    n_classes = max(len(classes or []), int(max(ytr.max(), yte.max()).item()) + 1)
    probe, sweep = sweep_linear_probe(
        xtr,
        ytr,
        n_classes,
        protocol.probe_weight_decays,
        protocol.probe_val_fraction,
        prefer=protocol.probe_weight_decay,
        classes=list(classes or []),
    )
    knn = knn_accuracy(xtr, ytr, xte, yte, protocol.knn_k, protocol.knn_temperature)
    return Scores(knn, probe.accuracy(xte, yte), probe, sweep, n_classes, train, test)


def score_features(
    train: Features,
    test: Features,
    protocol: Protocol,
    classes: Sequence[str] | None = None,
) -> tuple[dict[str, float], LinearProbe]:
    """The headline metrics (:meth:`Scores.metrics`) and the fitted probe."""
    scores = protocol_scores(train, test, protocol, classes)
    return scores.metrics(), scores.probe


def evaluate_backbone(
    model: nn.Module,
    train_src: ImageSource,
    test_src: ImageSource,
    transform: Callable[[Any], Any],
    protocol: Protocol,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> tuple[dict[str, float], LinearProbe]:
    """Extract features (``protocol.features``) of both splits and score them (kNN + linear
    probe); the metrics name the kind under ``features``."""
    train, test = split_features(
        model, (train_src, test_src), transform, protocol, device, progress
    )
    metrics, probe = score_features(train, test, protocol, classes=list(train_src.classes))
    return {**metrics, "features": protocol.features}, probe
