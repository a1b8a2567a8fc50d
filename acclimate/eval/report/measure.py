"""The measurements of ``acclimate evaluate``, on cached features: the protocol's kNN and linear
probe (:mod:`acclimate.eval.protocol`, the same figures as training's before/after), plus kNN at
more k, the probe's top-1 / macro-F1 / balanced accuracy / confusion matrix, few-shot probes,
retrieval and the forgetting check on a source-domain set."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from torch import nn

from acclimate.data.readers import DEFAULT_OPTIONS, ReadOptions
from acclimate.eval.fewshot import fewshot_probe
from acclimate.eval.knn import knn_accuracy
from acclimate.eval.metrics import classification_metrics
from acclimate.eval.protocol import (
    Features,
    Protocol,
    SplitFeatures,
    labelled_splits,
    protocol_scores,
    split_features,
)
from acclimate.eval.retrieval import retrieval_metrics


@dataclass
class ReportSettings(Protocol):
    """The protocol (:class:`~acclimate.eval.protocol.Protocol`: splits, features, kNN, probe,
    image limits) plus what the report measures besides.

    Args:
        knn_ks: more neighbour counts of the weighted kNN (DINO reports k=10 and 20), shown
            beside the protocol's ``knn_k`` (the headline ``knn_top1``).
        shots: labelled images per class of the few-shot probes.
        seeds: random draws per few-shot setting (mean and standard deviation are reported).
        retrieval_ks: cut-offs of recall@k and mAP@k.
        map_points: test images drawn (seed 0) on the 2D embedding maps.
    """

    knn_ks: Sequence[int] = (10, 20)
    shots: Sequence[int] = (1, 5, 10)
    seeds: Sequence[int] = (0, 1, 2)
    retrieval_ks: Sequence[int] = (1, 5, 10)
    map_points: int = 2000

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("knn_ks", "shots", "seeds", "retrieval_ks"):
            if len(getattr(self, name)) == 0:
                raise ValueError(f"{name} must not be empty")
        if min(self.knn_ks) < 1 or min(self.shots) < 1 or min(self.retrieval_ks) < 1:
            raise ValueError("knn_ks, shots and retrieval_ks must be positive")

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def measure_features(
    train: Features,
    test: Features,
    settings: ReportSettings,
    classes: Sequence[str] | None = None,
    fewshot: bool = True,
    retrieval: bool = True,
) -> dict[str, Any]:
    """Every report metric from cached features: train/test = (features (N, D), labels (N,));
    ``knn_top1`` and ``linear_top1`` are the protocol's (``protocol_scores``)."""
    gone = {role: getattr(f, "left_out", {}) for role, f in (("train", train), ("test", test))}
    s = protocol_scores(train, test, settings, classes)
    (xtr, ytr), (xte, yte) = s.train, s.test
    knn = {
        str(k): s.knn_top1
        if k == settings.knn_k
        else knn_accuracy(xtr, ytr, xte, yte, k, settings.knn_temperature)
        for k in sorted({*settings.knn_ks, settings.knn_k})
    }
    linear = {
        **classification_metrics(yte, s.probe.predict(xte), s.n_classes),
        "top1": s.linear_top1,
        **s.sweep,
    }
    out: dict[str, Any] = {
        "knn_top1": s.knn_top1,
        "linear_top1": s.linear_top1,
        "macro_f1": linear["macro_f1"],
        "balanced_accuracy": linear["balanced_accuracy"],
        "n_train": int(len(ytr)),
        "n_test": int(len(yte)),
        "classes": list(classes or [str(i) for i in range(s.n_classes)]),
        "knn": knn,
        "linear": linear,
    }
    if fewshot:
        wd = settings.probe_weight_decay
        out["fewshot"] = fewshot_probe(
            s.train, s.test, s.n_classes, settings.shots, settings.seeds, wd
        )
    if retrieval:
        out["retrieval"] = retrieval_metrics(xtr, ytr, xte, yte, settings.retrieval_ks)
    if any(gone.values()):
        out["left_out"] = {role: items for role, items in gone.items() if items}
    return out


def measure_model(
    model: nn.Module,
    transform: Callable[[Any], Any],
    channels: int,
    data: str,
    settings: ReportSettings,
    options: ReadOptions = DEFAULT_OPTIONS,
    forgetting_data: str | None = None,
) -> tuple[dict[str, Any], SplitFeatures]:
    """One model's report entry (:func:`measure_features` on ``data``, read with the model's
    ``options``; ``forgetting`` on ``forgetting_data``, read plainly) and its test features."""
    sources = labelled_splits(data, channels, settings, options)
    train, test = split_features(model, sources, transform, settings)
    metrics = measure_features(train, test, settings, sources[0].classes)
    if forgetting_data:
        src = labelled_splits(forgetting_data, channels, settings)
        feats = split_features(model, src, transform, settings)
        metrics["forgetting"] = measure_features(
            *feats, settings, src[0].classes, fewshot=False, retrieval=False
        )
    return metrics, test


def headline(m: dict[str, Any]) -> dict[str, float]:
    """The few numbers a model card shows, from one model's report entry."""
    h = {
        "knn_top1": m["knn_top1"],
        "linear_top1": m["linear_top1"],
        "macro_f1": m["macro_f1"],
        "balanced_accuracy": m["balanced_accuracy"],
    }
    fs = m.get("fewshot") or {}
    if fs:
        mid = sorted(fs, key=int)[len(fs) // 2]
        h[f"{mid}shot_top1"] = fs[mid]["mean"]
    r = m.get("retrieval") or {}
    for key in ("recall@1", "map@10"):
        if key in r:
            h[key] = r[key]
    f = m.get("forgetting")
    if f:
        h["source_linear_top1"] = f["linear_top1"]
    return h
