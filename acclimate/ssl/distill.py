"""Feature distillation: a smaller student learns to reproduce a frozen teacher's embeddings on
domain images (in the spirit of Oquab et al. 2023, Sec. 5, which distils DINOv2 ViT-g into smaller
models; here with an embedding-regression loss and any teacher the backbone factory can build)."""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from acclimate.backbones import create_backbone, feature_dim
from acclimate.eval.multilayer import last_k_problem, last_k_widths, pooled_and_last_k
from acclimate.ssl.base import SSLModule
from acclimate.ssl.losses import EmbeddingDistillLoss
from acclimate.ssl.optim import OptimSettings
from acclimate.ssl.two_view import two_views


def input_channels(model: nn.Module) -> int:
    """Input channels of a timm backbone (its first convolution: stem or patch embedding)."""
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    return conv.in_channels if conv is not None else 3


class Distill(SSLModule):
    """Student (the recipe's ``backbone``) regresses a frozen teacher's pooled embeddings.

    The teacher is built by `create_backbone` from ``teacher_name`` / ``teacher_weights``: any
    timm backbone (DINOv2, SigLIP or CLIP vision towers, ...) with hub weights or a local file, or
    an acclimate export folder (``teacher_weights: path/to/export``). It stays frozen, in eval
    mode, and is left out of checkpoints (rebuilt from the recipe on resume). The student's
    embedding goes through a linear projection when the widths differ; the projection is a
    training head and is not exported, so the export is a plain student backbone.

    Preprocessing: the teacher sees the student's views exactly as normalised for the student
    (``data.mean`` / ``data.std``), resized to ``teacher_image_size`` when given. Use statistics
    that suit both (the teacher's own, e.g. ``data.mean: [0.485, 0.456, 0.406]`` for an
    ImageNet-normalised teacher), or accept the mismatch for domain statistics.

    Args:
        backbone: student; ``backbone(x)`` -> (B, D_s).
        batch_size: images per device per step (sets the learning-rate scaling).
        optim: optimiser settings. With no projection (equal widths), set
            ``optim.freeze_backbone_epochs: 0``: nothing else would train during the warm-up.
        teacher_name: timm name of the teacher (``vit_base_patch14_dinov2.lvd142m``,
            ``vit_base_patch16_siglip_224.webli``, ...).
        teacher_weights: ``hub``, ``package:NAME``, a checkpoint file or an export folder (as
            ``backbone.weights``); None is a random teacher (only for tests).
        teacher_image_size: resize the views to this side for the teacher (bilinear, antialias);
            set it when the teacher needs a fixed input size or its patch size does not divide
            the crop (DINOv2: 14). None feeds the views unchanged.
        loss: ``cosine`` or ``smooth_l1`` on L2-normalised embeddings.
        smooth_l1_beta: threshold of the smooth-L1 loss.
        projection: ``auto`` = a linear layer only when the widths differ; ``linear`` = always.
        teacher_scale, anchor_weight: the levers for a pretrained start (`SSLModule.init_levers`,
            `acclimate.ssl.anchor`): the teacher sees the views upsampled by ``teacher_scale``;
            ``anchor_weight`` > 0 adds a distillation term from the frozen start.
        teacher_layers: 0 regresses the teacher's pooled embedding only. k > 0 also regresses
            the pooled outputs of its last k stages (CNNs) or the CLS tokens of its last k
            blocks and the mean patch token (ViTs): the parts of the ``last{k}`` feature kind
            (`acclimate.eval.multilayer`), taken from the same teacher forward. The student's
            pooled embedding predicts each part through one linear training head (not
            exported); the loss is the mean of the pooled term and the mean of the parts'
            terms. A frozen start's middle stages keep detail of small tiles that its last
            stage pools away (EfficientNet-Lite0 on 64 px EuroSAT: last4 0.941 linear against
            0.899 pooled); this asks the student's single pooled vector to carry it.
    """

    def __init__(
        self,
        backbone: nn.Module,
        batch_size: int = 64,
        optim: OptimSettings | None = None,
        teacher_name: str = "vit_small_patch14_dinov2.lvd142m",
        teacher_weights: str | None = "hub",
        teacher_image_size: int | None = None,
        loss: Literal["cosine", "smooth_l1"] = "cosine",
        smooth_l1_beta: float = 0.1,
        projection: Literal["auto", "linear"] = "auto",
        teacher_scale: float = 1.0,
        anchor_weight: float = 0.0,
        teacher_layers: int = 0,
    ) -> None:
        super().__init__(backbone, batch_size, optim)
        if teacher_image_size is not None and teacher_image_size <= 0:
            raise ValueError(f"teacher_image_size must be positive, got {teacher_image_size}")
        if teacher_image_size is not None and teacher_scale != 1.0:
            raise ValueError("set teacher_image_size or teacher_scale, not both")
        self.save_method_hparams()
        self.init_levers(teacher_scale, anchor_weight)
        teacher = create_backbone(teacher_name, teacher_weights, in_chans=input_channels(backbone))
        self.teacher = teacher.requires_grad_(False)  # eval mode is set at every use
        d_s, d_t = feature_dim(backbone), feature_dim(self.teacher)
        if d_s != d_t or projection == "linear":
            self.projection: nn.Module = nn.Linear(d_s, d_t)
        else:
            self.projection = nn.Identity()
            if self.optim.freeze_backbone_epochs > 0:
                raise ValueError(
                    "student and teacher widths are equal, so there is no projection to warm up "
                    "while the backbone is frozen; set optim.freeze_backbone_epochs: 0 or "
                    "method.projection: linear"
                )
        self.criterion = EmbeddingDistillLoss(loss, smooth_l1_beta)
        self.layer_widths: list[int] = []
        self.layer_head: nn.Module | None = None
        if not isinstance(teacher_layers, int) or teacher_layers < 0:
            raise ValueError(f"teacher_layers must be a whole number >= 0, got {teacher_layers}")
        if teacher_layers:
            problem = last_k_problem(self.teacher, teacher_layers)
            if problem:
                raise ValueError(f"method.teacher_layers: {problem}")
            self.layer_widths = last_k_widths(self.teacher, teacher_layers)
            self.layer_head = nn.Linear(d_s, sum(self.layer_widths))

    def head_modules(self) -> list[nn.Module]:
        return [self.projection] + ([self.layer_head] if self.layer_head is not None else [])

    def networks(self) -> list[nn.Module]:
        return [*super().networks(), self.teacher]

    def teacher_embed(self, x: Tensor) -> Tensor:
        """x: (B, C, H, W) student-normalised views -> (B, D_t) teacher embeddings."""
        return self.teacher_targets(x)[0]

    @torch.no_grad()
    def teacher_targets(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """x: (B, C, H, W) -> the teacher's pooled embedding (B, D_t) and, with
        ``teacher_layers``, its layer parts (B, w_i) (else an empty list)."""
        self.teacher.eval()
        size = self.hparams.teacher_image_size
        if size is not None and x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True)
        x = self.teacher_view(x)
        if self.layer_head is None:
            return self.teacher(x), []
        return pooled_and_last_k(self.teacher, x, self.hparams.teacher_layers)

    def training_step(self, batch: tuple[dict, Tensor], batch_idx: int) -> Tensor:
        x = torch.cat(two_views(batch))
        target, parts = self.teacher_targets(x)
        with self.maybe_frozen():
            feats = self.backbone(x)
        loss = self.criterion(self.projection(feats), target)
        extra = {}
        if self.layer_head is not None:
            preds = self.layer_head(feats).split(self.layer_widths, dim=1)
            layers = torch.stack(
                [self.criterion(p, t) for p, t in zip(preds, parts, strict=True)]
            ).mean()
            extra["distill/layers"] = layers.detach()
            loss = (loss + layers) / 2
        loss = self.with_anchor(loss, x, feats)
        self.log_loss(loss, extra)
        return loss

    # The frozen teacher is rebuilt from the recipe: keep it out of checkpoints (a ViT-L teacher
    # would add over 1 GB to every one).
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        sd = checkpoint.get("state_dict", {})
        for k in [k for k in sd if k.startswith("teacher.")]:
            del sd[k]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        sd = checkpoint.setdefault("state_dict", {})
        for k, v in self.teacher.state_dict(prefix="teacher.").items():
            sd.setdefault(k, v)
