"""Classification metrics from predictions, computed by torchmetrics: the confusion matrix,
macro-F1 and balanced accuracy.

The averages are taken here, over the classes that occur, so that they do not depend on how a
torchmetrics version weights absent classes: macro-F1 averages per-class F1 = 2 TP / (2 TP + FP +
FN) over the classes seen as a true or a predicted label; balanced accuracy averages per-class
recall over the classes present in the true labels (as scikit-learn's ``balanced_accuracy_score``).
"""

from __future__ import annotations

from torch import Tensor
from torchmetrics.functional.classification import (
    multiclass_confusion_matrix,
    multiclass_f1_score,
    multiclass_recall,
)


def classification_metrics(labels: Tensor, pred: Tensor, n_classes: int) -> dict[str, object]:
    """top-1, macro-F1, balanced accuracy and the confusion matrix (row = true class, column =
    predicted class, as nested lists) of ``pred`` (N,) against ``labels`` (N,) in
    [0, n_classes)."""
    labels, pred = labels.long(), pred.long()
    if len(labels) == 0:
        empty = [[0] * n_classes for _ in range(n_classes)]
        return {"top1": 0.0, "macro_f1": 0.0, "balanced_accuracy": 0.0, "confusion": empty}
    args = {"num_classes": n_classes, "average": "none"}
    cm = multiclass_confusion_matrix(pred, labels, n_classes)
    f1 = multiclass_f1_score(pred, labels, **args).double()
    recall = multiclass_recall(pred, labels, **args).double()
    seen = (cm.sum(0) + cm.sum(1)) > 0  # true or predicted somewhere
    true = cm.sum(1) > 0
    return {
        "top1": float((pred == labels).double().mean()),
        "macro_f1": float(f1[seen].mean()),
        "balanced_accuracy": float(recall[true].mean()),
        "confusion": cm.tolist(),
    }
