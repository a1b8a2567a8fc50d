"""Linear probes on frozen features: multinomial logistic regression, full-batch L-BFGS."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor


@dataclass
class LinearProbe:
    """``logits = ((x - mean) / std) @ weight.T + bias``.

    weight: (C, D); bias: (C,); mean, std: (D,) feature standardisation from the probe's
    training set; classes: C names.
    """

    weight: Tensor
    bias: Tensor
    mean: Tensor
    std: Tensor
    classes: list[str] = field(default_factory=list)

    def logits(self, feats: Tensor) -> Tensor:
        """feats: (N, D) -> (N, C)."""
        x = (feats.float() - self.mean) / self.std
        return x @ self.weight.T + self.bias

    def predict(self, feats: Tensor) -> Tensor:
        return self.logits(feats).argmax(1)

    def accuracy(self, feats: Tensor, labels: Tensor) -> float:
        return float((self.predict(feats) == labels).float().mean().item())

    def save(self, path: str | Path) -> None:
        tensors = {"weight": self.weight, "bias": self.bias, "mean": self.mean, "std": self.std}
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))

    @classmethod
    def load(cls, path: str | Path, classes: list[str] | None = None) -> LinearProbe:
        t = load_file(str(path))
        return cls(t["weight"], t["bias"], t["mean"], t["std"], list(classes or []))


def train_linear_probe(
    feats: Tensor,
    labels: Tensor,
    n_classes: int,
    weight_decay: float = 1e-3,
    max_iter: int = 300,
    classes: list[str] | None = None,
) -> LinearProbe:
    """Fit a linear classifier on standardised frozen features.

    Minimises mean cross-entropy + ``weight_decay`` * ||W||^2 with L-BFGS on the full batch, so
    the result is deterministic and needs no learning rate.

    feats: (N, D); labels: (N,) in [0, n_classes).
    """
    x = feats.float()
    mean = x.mean(0)
    std = x.std(0).clamp_min(1e-6)
    x = (x - mean) / std
    w = torch.zeros(n_classes, x.shape[1], requires_grad=True)
    b = torch.zeros(n_classes, requires_grad=True)
    opt = torch.optim.LBFGS(
        [w, b],
        lr=1.0,
        max_iter=max_iter,
        history_size=20,
        line_search_fn="strong_wolfe",
        tolerance_grad=1e-6,
    )

    def closure() -> Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(x @ w.T + b, labels) + weight_decay * (w * w).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return LinearProbe(w.detach(), b.detach(), mean, std, list(classes or []))
