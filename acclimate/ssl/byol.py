"""BYOL (Grill et al., "Bootstrap Your Own Latent: A New Approach to Self-Supervised Learning",
NeurIPS 2020), set up for continuing from a pretrained backbone."""

from __future__ import annotations

from torch import Tensor, nn

from acclimate.backbones import feature_dim
from acclimate.ssl.heads import MLPHead
from acclimate.ssl.losses import BYOLLoss
from acclimate.ssl.optim import OptimSettings
from acclimate.ssl.two_view import MomentumModule


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
        teacher_scale, anchor_weight: the levers for a pretrained start (`SSLModule.init_levers`,
            `acclimate.ssl.anchor`): the teacher sees the views upsampled by ``teacher_scale``;
            ``anchor_weight`` > 0 adds a distillation term from the frozen start.
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
        teacher_scale: float = 1.0,
        anchor_weight: float = 0.0,
    ) -> None:
        super().__init__(backbone, batch_size, optim)
        self.save_method_hparams()
        self.init_levers(teacher_scale, anchor_weight)
        in_dim = feature_dim(backbone)
        projector = MLPHead(in_dim, hidden_dim, dim, sync_bn=sync_bn_in_head)
        predictor = MLPHead(dim, hidden_dim, dim, sync_bn=sync_bn_in_head)
        self.init_momentum(momentum, momentum_end, projector, predictor)
        self.criterion = BYOLLoss()

    def training_step(self, batch: tuple[dict, Tensor], batch_idx: int) -> Tensor:
        outputs, images, feats = self.predictions_and_targets(batch)
        loss = self.with_anchor(self.criterion(*outputs), images, feats)
        self.log_loss(loss, {"byol/momentum": self.teacher_momentum()})
        return loss
