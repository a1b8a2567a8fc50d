"""Frozen-feature evaluation: feature extraction, weighted kNN, linear probes, the protocol."""

from acclimate.eval.knn import knn_accuracy, knn_predict
from acclimate.eval.linear import LinearProbe, train_linear_probe
from acclimate.eval.protocol import (
    EvalSettings,
    Protocol,
    evaluate_backbone,
    labelled_splits,
    score_features,
    split_features,
)

__all__ = [
    "EvalSettings",
    "LinearProbe",
    "Protocol",
    "evaluate_backbone",
    "knn_accuracy",
    "knn_predict",
    "labelled_splits",
    "score_features",
    "split_features",
    "train_linear_probe",
]
