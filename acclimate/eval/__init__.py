"""Frozen-feature evaluation: feature extraction, weighted kNN, linear probes, the protocol."""

from acclimate.eval.evaluate import EvalSettings, evaluate_backbone, labelled_splits, score_features
from acclimate.eval.knn import knn_accuracy, knn_predict
from acclimate.eval.linear import LinearProbe, train_linear_probe

__all__ = [
    "EvalSettings",
    "LinearProbe",
    "evaluate_backbone",
    "knn_accuracy",
    "knn_predict",
    "labelled_splits",
    "score_features",
    "train_linear_probe",
]
