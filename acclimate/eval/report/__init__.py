"""The evaluation report of ``acclimate evaluate``: every model measured with one frozen-feature
protocol (:mod:`acclimate.eval.protocol`) on cached features, written as ``metrics.json`` +
``report.md`` + ``report.html`` + PNGs.

Per model: weighted kNN (several k), a linear probe whose weight decay is chosen on a validation
split carved from the train split and reported once on test (top-1, macro-F1, balanced accuracy,
confusion matrix), few-shot linear probes (mean and spread over seeds), retrieval (recall@k,
mAP@k; test images query the train images), and optionally a forgetting check on a second,
source-domain labelled set. The first model is the reference the others are compared with.

- :mod:`.measure`: the measurements (``ReportSettings``, ``measure_features``, ``measure_model``)
- :mod:`.sections`: the report's content as blocks (tables, paragraphs, figures)
- :mod:`.render`: markdown, HTML, the figures and ``write_report``
"""

from acclimate.eval.report.measure import (
    ReportSettings,
    headline,
    measure_features,
    measure_model,
)
from acclimate.eval.report.render import write_report

__all__ = ["ReportSettings", "headline", "measure_features", "measure_model", "write_report"]
