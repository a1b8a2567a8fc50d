"""SimCLR (Chen et al., "A Simple Framework for Contrastive Learning of Visual Representations",
ICML 2020), set up for continuing from a pretrained backbone."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from acclimate.backbones import feature_dim
from acclimate.ssl.base import SSLModule
from acclimate.ssl.heads import MLPHead
from acclimate.ssl.losses import NTXentLoss
from acclimate.ssl.optim import OptimSettings
from acclimate.ssl.two_view import two_views


class SimCLR(SSLModule):
    """Two views of each image, one encoder, a projection MLP, NT-Xent over the global batch.

    The batch is ``({"global": [v1, v2], "local": [...]}, labels)`` from ``MultiCropTransform``
    (local crops are not used). Every other image of the global batch (all ranks) is a negative,
    so larger batches help more than for the momentum methods.

    Args:
        backbone: encoder f; ``backbone(x)`` -> (B, D).
        batch_size: images per device per step (sets the learning-rate scaling).
        optim: optimiser settings.
        proj_hidden_dim, proj_dim, proj_layers: projection head g (paper: 2048, 128, 2 layers).
        use_bn_in_head: BatchNorm in the projection head (the paper's code: yes).
        sync_bn_in_head: head BatchNorm statistics over every rank (the paper's global BN).
        temperature: NT-Xent tau (paper: 0.1 at batch 4096; use 0.2-0.5 for batches under 256).
        anchor_weight: weight of a distillation term from the frozen starting backbone
            (cosine distance of pooled features, `acclimate.ssl.anchor`); 0 disables it.
    """

    def __init__(
        self,
        backbone: nn.Module,
        batch_size: int = 64,
        optim: OptimSettings | None = None,
        proj_hidden_dim: int = 2048,
        proj_dim: int = 128,
        proj_layers: int = 2,
        use_bn_in_head: bool = True,
        sync_bn_in_head: bool = True,
        temperature: float = 0.1,
        anchor_weight: float = 0.0,
    ) -> None:
        super().__init__(backbone, batch_size, optim)
        self.save_method_hparams()
        self.init_levers(1.0, anchor_weight)
        self.projector = MLPHead(
            feature_dim(backbone),
            proj_hidden_dim,
            proj_dim,
            n_layers=proj_layers,
            use_bn=use_bn_in_head,
            sync_bn=sync_bn_in_head,
        )
        self.criterion = NTXentLoss(temperature)

    def head_modules(self) -> list[nn.Module]:
        return [self.projector]

    def training_step(self, batch: tuple[dict, Tensor], batch_idx: int) -> Tensor:
        images = torch.cat(two_views(batch))
        with self.maybe_frozen():
            feats = self.backbone(images)
        z1, z2 = self.projector(feats).chunk(2)  # BN over both views, as in the paper's code
        loss = self.with_anchor(self.criterion(z1, z2), images, feats)
        self.log_loss(loss)
        return loss
