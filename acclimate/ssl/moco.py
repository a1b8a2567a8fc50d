"""MoCo v3 (Chen, Xie, He, "An Empirical Study of Training Self-Supervised Vision Transformers",
ICCV 2021), set up for continuing from a pretrained backbone."""

from __future__ import annotations

from torch import Tensor, nn

from acclimate.backbones import feature_dim
from acclimate.ssl.heads import MLPHead
from acclimate.ssl.losses import MoCoV3Loss
from acclimate.ssl.optim import OptimSettings
from acclimate.ssl.two_view import MomentumModule


class MoCoV3(MomentumModule):
    """Query encoder (backbone + projector + predictor) against a momentum key encoder (backbone +
    projector, EMA of the query's), symmetric InfoNCE with the keys of the global batch.

    The momentum encoder starts as a copy of the pretrained backbone and a copy of the projector.
    The batch is ``({"global": [v1, v2], ...}, labels)`` from ``MultiCropTransform``.

    Args:
        backbone: base encoder; ``backbone(x)`` -> (B, D).
        batch_size: images per device per step (sets the learning-rate scaling).
        optim: optimiser settings.
        hidden_dim: hidden width of projector and predictor (paper: 4096).
        dim: output width of projector and predictor (paper: 256).
        proj_layers: projector depth (paper: 3 for ViT, 2 for ResNet).
        pred_layers: predictor depth (paper: 2).
        sync_bn_in_head: head BatchNorm statistics over every rank (the paper's SyncBN).
        temperature: tau (paper: 0.2 for ViT, 1.0 for ResNet).
        momentum: starting EMA momentum, raised to ``momentum_end`` by a cosine schedule
            (paper: 0.99 -> 1; raise towards 0.996 for small datasets or small batches).
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
        proj_layers: int = 3,
        pred_layers: int = 2,
        sync_bn_in_head: bool = True,
        temperature: float = 0.2,
        momentum: float = 0.99,
        momentum_end: float = 1.0,
        teacher_scale: float = 1.0,
        anchor_weight: float = 0.0,
    ) -> None:
        super().__init__(backbone, batch_size, optim)
        self.save_method_hparams()
        self.init_levers(teacher_scale, anchor_weight)
        projector = MLPHead(
            feature_dim(backbone),
            hidden_dim,
            dim,
            n_layers=proj_layers,
            last_bn=True,
            sync_bn=sync_bn_in_head,
        )
        # MoCo v3's ViT predictor ends in an affine-free BN too, its ResNet one does not
        vit = getattr(backbone, "patch_embed", None) is not None
        predictor = MLPHead(
            dim, hidden_dim, dim, n_layers=pred_layers, last_bn=vit, sync_bn=sync_bn_in_head
        )
        self.init_momentum(momentum, momentum_end, projector, predictor)
        self.criterion = MoCoV3Loss(temperature)

    def training_step(self, batch: tuple[dict, Tensor], batch_idx: int) -> Tensor:
        outputs, images, feats = self.predictions_and_targets(batch)
        loss = self.with_anchor(self.criterion(*outputs), images, feats)  # q1, q2, k1, k2
        self.log_loss(loss, {"moco/momentum": self.teacher_momentum()})
        return loss
