"""Shared parts of the two-view methods (SimCLR, MoCo v3, BYOL, distillation): the views of a
batch, loss logging, and the momentum (EMA) encoder with its cosine schedule."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from acclimate.ssl.base import SSLModule
from acclimate.ssl.ema import cosine_momentum, update_ema


def two_views(batch: tuple[dict, Tensor]) -> tuple[Tensor, Tensor]:
    """The two global views (B, C, H, W) of a ``MultiCropTransform`` batch; local crops, if any,
    are not used by these methods (set ``augment.n_local: 0`` to skip making them)."""
    views, _ = batch
    globals_ = list(views["global"])
    if len(globals_) < 2:
        raise ValueError(f"this method needs 2 global views per image, got {len(globals_)}")
    return globals_[0], globals_[1]


class TwoViewModule(SSLModule):
    """An `SSLModule` that logs ``train/loss`` (mean over ranks) and extra per-step values."""

    def log_loss(self, loss: Tensor, extra: dict[str, float] | None = None) -> None:
        if extra:
            self.log_dict(extra, on_step=True, on_epoch=False, batch_size=self.batch_size)
        self.log(
            "train/loss",
            loss,
            prog_bar=True,
            on_step=True,
            on_epoch=True,
            batch_size=self.batch_size,
            sync_dist=True,
        )


class MomentumModule(TwoViewModule):
    """A two-view method with a momentum encoder (MoCo, BYOL).

    Subclasses set ``self.momentum_start`` / ``self.momentum_end`` and list the (EMA, online)
    module pairs in ``ema_pairs``. After every optimiser step each EMA module follows its online
    module: ``t <- m t + (1 - m) s``, with ``m`` raised from start to end by a cosine schedule
    (BYOL Sec. 3.2; MoCo v3 Sec. 4).
    """

    momentum_start: float = 0.996
    momentum_end: float = 1.0

    def ema_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        raise NotImplementedError

    @staticmethod
    def check_momentum(start: float, end: float) -> None:
        if not 0.0 <= start <= end <= 1.0:
            raise ValueError(f"need 0 <= momentum <= momentum_end <= 1, got {start} and {end}")

    def teacher_momentum(self) -> float:
        return cosine_momentum(
            self.global_step, self.total_steps, self.momentum_start, self.momentum_end
        )

    def export_backbone(self) -> nn.Module:
        """The momentum encoder, as for DINO (``acclimate export --student`` gives the online
        one, which the MoCo v3 and BYOL papers evaluate)."""
        return self.teacher_backbone

    def online_forward(self, views: list[Tensor], head: nn.Module) -> list[Tensor]:
        """V views (B, C, H, W) -> V (B, D) projections: one backbone pass on the concatenated
        views, the head per view (its BatchNorm statistics are per view, as in the papers)."""
        with self.maybe_frozen():
            feats = self.backbone(torch.cat(views))
        return [head(f) for f in feats.chunk(len(views))]

    @torch.no_grad()
    def teacher_forward(self, views: list[Tensor], head: nn.Module) -> list[Tensor]:
        """Same for the momentum encoder: backbone in eval mode, head in train mode (its
        BatchNorm uses batch statistics, as in the papers); no gradient."""
        self.teacher_backbone.eval()
        feats = self.teacher_backbone(torch.cat(views))
        return [head(f) for f in feats.chunk(len(views))]

    def optimizer_step(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003 - Lightning's hook
        m = self.teacher_momentum()
        super().optimizer_step(*args, **kwargs)
        for ema, online in self.ema_pairs():
            update_ema(ema, online, m)
