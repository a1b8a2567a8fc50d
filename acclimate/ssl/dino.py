"""DINO self-distillation (Caron et al., "Emerging Properties in Self-Supervised Vision
Transformers", ICCV 2021), set up for continuing from a pretrained backbone."""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from acclimate.backbones import feature_dim
from acclimate.ssl.base import MomentumTeacherModule
from acclimate.ssl.center import Center
from acclimate.ssl.diagnostics import teacher_student_stats
from acclimate.ssl.heads import DINOHead
from acclimate.ssl.losses import DINOLoss
from acclimate.ssl.optim import OptimSettings
from acclimate.ssl.schedules import linear_warmup


def forward_by_size(backbone: nn.Module, views: list[Tensor]) -> Tensor:
    """Run ``backbone`` once per run of same-sized views (global crops, then local crops).

    views: V tensors (B, C, H_v, W_v) -> (V * B, D) features in view order.
    """
    out, i = [], 0
    while i < len(views):
        j = i
        while j < len(views) and views[j].shape[-2:] == views[i].shape[-2:]:
            j += 1
        out.append(backbone(torch.cat(views[i:j])))
        i = j
    return torch.cat(out)


class DINO(MomentumTeacherModule):
    """Student/teacher self-distillation with multi-crop, an EMA teacher and centring.

    The teacher starts from the same pretrained weights as the student (a copy), sees the global
    crops only, and follows the student by EMA with a cosine momentum schedule. The batch is a dict
    ``({"global": [G x (B, C, H, W)], "local": [L x (B, C, h, w)]}, labels)`` from
    ``MultiCropTransform`` through ``ImageDataset``.

    Args:
        backbone: student backbone; ``backbone(x)`` -> (B, D).
        batch_size: images per device per step (sets the learning-rate scaling).
        optim: optimiser settings.
        out_dim: prototypes K of the DINO head (paper: 65536).
        hidden_dim, bottleneck_dim, head_layers, use_bn_in_head, norm_last_layer: DINO head shape.
        student_temp: student temperature (paper: 0.1).
        teacher_temp: final teacher temperature (paper: 0.04-0.07).
        warmup_teacher_temp: starting teacher temperature (paper: 0.04).
        warmup_teacher_temp_epochs: linear warm-up of the teacher temperature (paper: 30 of 100).
        center_momentum: centre EMA momentum (paper: 0.9).
        momentum_teacher: starting teacher EMA momentum, raised to ``momentum_teacher_end`` by a
            cosine schedule (paper: 0.996 -> 1). Raise it towards 0.999 on small datasets.
        freeze_last_layer_epochs: keep the prototype layer fixed this long (paper: 1 epoch).
        teacher_scale, anchor_weight: the levers for a pretrained start (`SSLModule.init_levers`,
            `acclimate.ssl.anchor`): the teacher sees the views upsampled by ``teacher_scale``;
            ``anchor_weight`` > 0 adds a distillation term from the frozen start.
    """

    def __init__(
        self,
        backbone: nn.Module,
        batch_size: int = 64,
        optim: OptimSettings | None = None,
        out_dim: int = 65536,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        head_layers: int = 3,
        use_bn_in_head: bool = False,
        norm_last_layer: bool = True,
        student_temp: float = 0.1,
        teacher_temp: float = 0.04,
        warmup_teacher_temp: float = 0.04,
        warmup_teacher_temp_epochs: float = 0.0,
        center_momentum: float = 0.9,
        momentum_teacher: float = 0.996,
        momentum_teacher_end: float = 1.0,
        freeze_last_layer_epochs: float = 1.0,
        teacher_scale: float = 1.0,
        anchor_weight: float = 0.0,
    ) -> None:
        super().__init__(backbone, batch_size, optim)
        if not 0.0 <= momentum_teacher <= momentum_teacher_end <= 1.0:
            raise ValueError(
                "need 0 <= momentum_teacher <= momentum_teacher_end <= 1, got "
                f"{momentum_teacher} and {momentum_teacher_end}"
            )
        if teacher_temp <= 0 or warmup_teacher_temp <= 0:
            raise ValueError("teacher_temp and warmup_teacher_temp must be positive")
        self.save_method_hparams()
        self.momentum_start, self.momentum_end = momentum_teacher, momentum_teacher_end
        dim = feature_dim(backbone)
        head_args = dict(
            hidden_dim=hidden_dim,
            bottleneck_dim=bottleneck_dim,
            n_layers=head_layers,
            use_bn=use_bn_in_head,
        )
        self.head = DINOHead(dim, out_dim, norm_last_layer=norm_last_layer, **head_args)
        self.init_levers(teacher_scale, anchor_weight)
        self.teacher_backbone = copy.deepcopy(backbone).requires_grad_(False)
        self.teacher_head = copy.deepcopy(self.head).requires_grad_(False)
        self.center = Center(out_dim, center_momentum)
        self.criterion = DINOLoss(student_temp)

    default_clip_rule = "per_param"  # DINO clips each parameter's gradient norm (3.0)

    def head_modules(self) -> list[nn.Module]:
        return [self.head]

    def ema_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [(self.teacher_backbone, self.backbone), (self.teacher_head, self.head)]

    def centers(self) -> list[Center]:
        """The running centres, updated once per optimiser step (`after_optimizer_step`)."""
        return [self.center]

    def after_optimizer_step(self) -> None:
        super().after_optimizer_step()
        for center in self.centers():
            center.step()

    def teacher_temperature(self) -> float:
        h = self.hparams
        warm = int(h.warmup_teacher_temp_epochs * self.steps_per_epoch)
        return linear_warmup(self.global_step, warm, h.warmup_teacher_temp, h.teacher_temp)

    def training_step(self, batch: tuple[dict, Tensor], batch_idx: int) -> Tensor:
        views, _ = batch  # labels, if any, are not used
        globals_, locals_ = list(views["global"]), list(views.get("local", []))
        n_global = len(globals_)
        with torch.no_grad():
            self.teacher_mode(self.teacher_backbone, self.teacher_head)
            teacher_in = [self.teacher_view(g) for g in globals_]
            teacher_out = self.teacher_head(forward_by_size(self.teacher_backbone, teacher_in))
        with self.maybe_frozen():
            feats = forward_by_size(self.backbone, globals_ + locals_)
        student_out = self.head(feats)
        t_chunks = teacher_out.float().chunk(n_global)
        s_chunks = student_out.float().chunk(n_global + len(locals_))
        temp = self.teacher_temperature()
        loss = self.criterion(list(s_chunks), list(t_chunks), self.center(), temp)
        n_g = globals_[0].shape[0] * n_global
        loss = self.with_anchor(loss, torch.cat(globals_), feats[:n_g])
        extra = {"dino/teacher_temp": temp, "dino/momentum": self.teacher_momentum()}
        extra |= self.collapse_stats(t_chunks[0], s_chunks[0], temp)
        self.center.accumulate(teacher_out.float())  # applied after the optimiser step
        self.log_loss(loss, extra)
        return loss

    def collapse_stats(self, teacher: Tensor, student: Tensor, temp: float) -> dict[str, Tensor]:
        """Teacher entropy, batch entropy and KL(teacher || student) on one global view, every
        ``log_every_n_steps`` steps (`acclimate.ssl.diagnostics`); {} on the other steps.

        teacher, student: (B, K) logits of the same crops; the centre before this step's update.
        """
        every = getattr(self._trainer, "log_every_n_steps", None)  # None: no trainer
        if not every or self.global_step % every:
            return {}
        probs = torch.softmax((teacher.float() - self.center()) / temp, dim=-1)
        stats = teacher_student_stats(probs, student, self.hparams.student_temp)
        return {f"collapse/{k}": v for k, v in stats.items()}

    def on_after_backward(self) -> None:
        """Keep the prototype layers of the DINO heads fixed for ``freeze_last_layer_epochs``."""
        if self.epoch_progress < self.hparams.freeze_last_layer_epochs:
            for head in self.head_modules():
                if isinstance(head, DINOHead):
                    for p in head.last_layer.parameters():
                        p.grad = None
