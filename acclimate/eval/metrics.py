"""Classification metrics from predictions: confusion matrix, macro-F1, balanced accuracy."""

from __future__ import annotations

import torch
from torch import Tensor


def confusion_matrix(labels: Tensor, pred: Tensor, n_classes: int) -> Tensor:
    """(n_classes, n_classes) int64 counts; row = true class, column = predicted class."""
    idx = labels.long() * n_classes + pred.long()
    return torch.bincount(idx, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def macro_f1(cm: Tensor) -> float:
    """Unweighted mean of per-class F1 = 2 TP / (2 TP + FP + FN) over the classes that occur
    (as true or predicted labels); cm from :func:`confusion_matrix`."""
    cm = cm.double()
    tp = cm.diag()
    support = cm.sum(1) + cm.sum(0)  # 2 TP + FP + FN
    present = support > 0
    if not present.any():
        return 0.0
    return float((2 * tp[present] / support[present]).mean())


def balanced_accuracy(cm: Tensor) -> float:
    """Mean per-class recall over the classes present in the true labels."""
    cm = cm.double()
    n_true = cm.sum(1)
    present = n_true > 0
    if not present.any():
        return 0.0
    return float((cm.diag()[present] / n_true[present]).mean())


def classification_metrics(labels: Tensor, pred: Tensor, n_classes: int) -> dict[str, object]:
    """top-1, macro-F1, balanced accuracy and the confusion matrix (as nested lists)."""
    cm = confusion_matrix(labels, pred, n_classes)
    return {
        "top1": float((pred == labels).double().mean()) if len(labels) else 0.0,
        "macro_f1": macro_f1(cm),
        "balanced_accuracy": balanced_accuracy(cm),
        "confusion": cm.tolist(),
    }
