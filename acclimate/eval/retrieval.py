"""Retrieval metrics on labelled features: queries search a gallery by cosine similarity, and a
result is relevant when it has the query's class.

- ``recall@k``: fraction of queries with at least one relevant item among the top k (the
  "Recall@K" of metric learning, e.g. Song et al. 2016).
- ``map@k``: mean over queries of AP@k = sum_{i<=k} P(i) rel(i) / min(k, n_relevant), with P(i)
  the precision of the top i.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


@torch.no_grad()
def retrieval_metrics(
    gallery: Tensor,
    gallery_labels: Tensor,
    queries: Tensor,
    query_labels: Tensor,
    ks: Sequence[int] = (1, 5, 10),
    exclude_self: bool = False,
    chunk: int = 1024,
) -> dict[str, float]:
    """gallery: (N, D), gallery_labels: (N,); queries: (M, D), query_labels: (M,).

    ``exclude_self`` (queries == gallery, leave-one-out) drops each query's own entry.
    Returns ``{"recall@k": ..., "map@k": ...}`` for each k (k capped at the gallery size).
    """
    g = F.normalize(gallery.float(), dim=1)
    kmax = min(max(ks), g.shape[0] - int(exclude_self))
    if kmax < 1:
        raise ValueError("retrieval needs a gallery with at least one candidate per query")
    n_rel_per_class = torch.bincount(gallery_labels.long(), minlength=int(query_labels.max()) + 1)
    hits, aps = {k: [] for k in ks}, {k: [] for k in ks}
    for start in range(0, queries.shape[0], chunk):
        q = F.normalize(queries[start : start + chunk].float(), dim=1)
        y = query_labels[start : start + chunk].long()
        sim = q @ g.T
        if exclude_self:
            rows = torch.arange(q.shape[0])
            sim[rows, rows + start] = -float("inf")
        idx = sim.topk(kmax, dim=1).indices
        rel = (gallery_labels.long()[idx] == y[:, None]).double()  # (m, kmax)
        n_rel = n_rel_per_class[y].double() - (1.0 if exclude_self else 0.0)
        precision = rel.cumsum(1) / torch.arange(1, kmax + 1, dtype=torch.float64)
        for k in ks:
            kk = min(k, kmax)
            hits[k].append(rel[:, :kk].amax(1))
            denom = torch.minimum(n_rel, torch.tensor(float(kk))).clamp_min(1.0)
            aps[k].append((precision[:, :kk] * rel[:, :kk]).sum(1) / denom)
    out: dict[str, float] = {}
    for k in ks:
        out[f"recall@{k}"] = float(torch.cat(hits[k]).mean())
        out[f"map@{k}"] = float(torch.cat(aps[k]).mean())
    return out
