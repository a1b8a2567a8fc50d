"""Deterministic principal component projection, for 2D maps of embeddings and the RGB picture
of patch features."""

from __future__ import annotations

import torch
from torch import Tensor


@torch.no_grad()
def pca_project(x: Tensor, n_components: int) -> Tensor:
    """x: (N, D) -> (N, n_components) scores on the leading principal components.

    Exact SVD of the centred data (no random projections), signs fixed so that each component's
    largest loading is positive: the same input always gives the same picture. Missing
    components (N or D smaller than ``n_components``) are zero columns.
    """
    x = x.double()
    x = x - x.mean(0, keepdim=True)
    _, _, vh = torch.linalg.svd(x, full_matrices=False)
    vh = vh[:n_components]
    signs = torch.sign(vh.gather(1, vh.abs().argmax(1, keepdim=True)))
    vh = vh * torch.where(signs == 0, torch.ones_like(signs), signs)
    scores = (x @ vh.T).float()
    if scores.shape[1] < n_components:
        pad = torch.zeros(scores.shape[0], n_components - scores.shape[1])
        scores = torch.cat([scores, pad], 1)
    return scores
