"""Shared parts of the two-view methods (SimCLR, MoCo v3, BYOL, distillation): the views of a
batch and the momentum (EMA) encoder."""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from acclimate.ssl.base import MomentumTeacherModule


def two_views(batch: tuple[dict, Tensor]) -> tuple[Tensor, Tensor]:
    """The two global views (B, C, H, W) of a ``MultiCropTransform`` batch; local crops, if any,
    are not used by these methods (set ``augment.n_local: 0`` to skip making them)."""
    views, _ = batch
    globals_ = list(views["global"])
    if len(globals_) < 2:
        raise ValueError(f"this method needs 2 global views per image, got {len(globals_)}")
    return globals_[0], globals_[1]


class MomentumModule(MomentumTeacherModule):
    """A two-view method with a momentum encoder (MoCo, BYOL).

    As `MomentumTeacherModule`: after every optimiser step each EMA module follows its online
    module, ``t <- m t + (1 - m) s``, with ``m`` raised from start to end by a cosine schedule
    (BYOL Sec. 3.2; MoCo v3 Sec. 4). The momentum encoder is exported (``acclimate export
    --student`` gives the online one, which the MoCo v3 and BYOL papers evaluate).
    """

    def init_momentum(
        self, start: float, end: float, projector: nn.Module, predictor: nn.Module
    ) -> None:
        """Set the momentum schedule and the heads; the momentum encoder starts as copies of the
        (pretrained) backbone and of the projector."""
        if not 0.0 <= start <= end <= 1.0:
            raise ValueError(f"need 0 <= momentum <= momentum_end <= 1, got {start} and {end}")
        self.momentum_start, self.momentum_end = start, end
        self.projector, self.predictor = projector, predictor
        self.teacher_backbone = copy.deepcopy(self.backbone).requires_grad_(False)
        self.teacher_projector = copy.deepcopy(projector).requires_grad_(False)

    def head_modules(self) -> list[nn.Module]:
        return [self.projector, self.predictor]

    def ema_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [(self.teacher_backbone, self.backbone), (self.teacher_projector, self.projector)]

    def predictions_and_targets(
        self, batch: tuple[dict, Tensor]
    ) -> tuple[tuple[Tensor, Tensor, Tensor, Tensor], Tensor, Tensor]:
        """((p1, p2, z1, z2), images, feats): online predictions of both views (B, dim), the
        momentum encoder's projections of both views (B, dim, no gradient; its input upsampled
        by ``teacher_scale``), and the online backbone's input (2B, C, H, W) and features
        (2B, D) for `with_anchor`."""
        views = list(two_views(batch))
        images = torch.cat(views)
        with self.maybe_frozen():
            feats = self.backbone(images)
        # the head per view: its BatchNorm statistics are per view, as in the papers
        p1, p2 = (self.predictor(self.projector(f)) for f in feats.chunk(2))
        z1, z2 = self.teacher_forward(views, self.teacher_projector)
        return (p1, p2, z1, z2), images, feats

    @torch.no_grad()
    def teacher_forward(self, views: list[Tensor], head: nn.Module) -> list[Tensor]:
        """V views (B, C, H, W) -> V (B, dim) momentum-encoder projections on the views
        upsampled by ``teacher_scale``: the backbone in `teacher_mode`, the head in train mode
        (its BatchNorm uses batch statistics, as in the papers); no gradient."""
        self.teacher_mode(self.teacher_backbone)
        feats = self.teacher_backbone(self.teacher_view(torch.cat(views)))
        return [head(f) for f in feats.chunk(len(views))]
