"""MAE reconstruction loss (He et al., "Masked Autoencoders Are Scalable Vision Learners",
CVPR 2022, Sec. 3)."""

from __future__ import annotations

from torch import Tensor, nn


class MAELoss(nn.Module):
    """Mean squared error on the masked patches only, optionally on per-patch normalised pixels.

    With ``norm_pix``, each target patch is standardised by its own mean and (unbiased) variance
    over its p * p * C values: ``(t - mean) / sqrt(var + eps)`` (the paper's better setting).

    Args:
        norm_pix: normalise each target patch (paper: True).
        eps: added to the variance (paper: 1e-6).
    """

    def __init__(self, norm_pix: bool = True, eps: float = 1e-6) -> None:
        super().__init__()
        self.norm_pix = norm_pix
        self.eps = eps

    def forward(self, pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
        """
        Args:
            pred: (B, N, p * p * C) predicted patches.
            target: (B, N, p * p * C) image patches (``patchify``).
            mask: (B, N), 1 / True = masked (the loss counts these only).

        Returns:
            scalar loss: mean over masked patches of the per-patch mean squared error.
        """
        target = target.float()
        if self.norm_pix:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + self.eps) ** 0.5
        per_patch = (pred.float() - target).pow(2).mean(dim=-1)
        m = mask.to(per_patch.dtype)
        return (per_patch * m).sum() / m.sum().clamp(min=1.0)
