"""BYOL (Grill et al., "Bootstrap Your Own Latent: A New Approach to Self-Supervised Learning",
NeurIPS 2020), set up for continuing from a pretrained backbone."""

from __future__ import annotations

import copy

from torch import Tensor, nn

from acclimate.backbones import feature_dim
from acclimate.ssl.heads import MLPHead
from acclimate.ssl.losses import BYOLLoss
from acclimate.ssl.optim import OptimSettings
from acclimate.ssl.two_view import MomentumModule, two_views


class BYOL(MomentumModule):
    """An online network (backbone + projector + predictor) regresses the target network's
    projection of the other view (backbone + projector, EMA of the online ones); no negatives.

    The target starts as a copy of the pretrained backbone and of the projector. The batch is
    ``({"global": [v1, v2], ...}, labels)`` from ``MultiCropTransform``.

    Args:
        backbone: encoder; ``backbone(x)`` -> (B, D).
        batch_size: images per device per step (sets the learning-rate scaling).
        optim: optimiser settings.
        hidden_dim: hidden width of projector and predictor (paper: 4096).
        dim: output width of projector and predictor (paper: 256).
        sync_bn_in_head: head BatchNorm statistics over every rank (the paper's setting).
        momentum: starting target EMA momentum, raised to ``momentum_end`` by a cosine schedule
            (paper: 0.996 -> 1; 0.99 adapts faster on small datasets).
    """

    def __init__(
        self,
        backbone: nn.Module,
        batch_size: int = 64,
        optim: OptimSettings | None = None,
        hidden_dim: int = 4096,
        dim: int = 256,
        sync_bn_in_head: bool = True,
        momentum: float = 0.996,
        momentum_end: float = 1.0,
    ) -> None:
        super().__init__(backbone, batch_size, optim)
        self.check_momentum(momentum, momentum_end)
        self.save_method_hparams()
        self.momentum_start, self.momentum_end = momentum, momentum_end
        in_dim = feature_dim(backbone)
        self.projector = MLPHead(in_dim, hidden_dim, dim, sync_bn=sync_bn_in_head)
        self.predictor = MLPHead(dim, hidden_dim, dim, sync_bn=sync_bn_in_head)
        self.teacher_backbone = copy.deepcopy(backbone).requires_grad_(False)
        self.teacher_projector = copy.deepcopy(self.projector).requires_grad_(False)
        self.criterion = BYOLLoss()

    def head_modules(self) -> list[nn.Module]:
        return [self.projector, self.predictor]

    def ema_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [(self.teacher_backbone, self.backbone), (self.teacher_projector, self.projector)]

    def training_step(self, batch: tuple[dict, Tensor], batch_idx: int) -> Tensor:
        views = list(two_views(batch))
        p1, p2 = (self.predictor(z) for z in self.online_forward(views, self.projector))
        z1, z2 = self.teacher_forward(views, self.teacher_projector)
        loss = self.criterion(p1, p2, z1, z2)
        self.log_loss(loss, {"byol/momentum": self.teacher_momentum()})
        return loss
