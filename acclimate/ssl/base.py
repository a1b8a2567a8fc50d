"""Shared training logic of every self-supervised method: optimiser, schedules, frozen warm-up."""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor, nn

from acclimate.ssl.anchor import StartAnchor, check_levers, upsample
from acclimate.ssl.ema import cosine_momentum, update_ema
from acclimate.ssl.optim import OptimSettings, name_groups, param_groups
from acclimate.ssl.schedules import StepSchedule, warmup_cosine


class SSLModule(pl.LightningModule):
    """Base LightningModule: a student ``backbone`` plus method heads.

    Subclasses implement ``training_step`` and ``head_modules`` and may override
    ``export_backbone`` (the network whose weights are exported: the EMA teacher where there is
    one). Schedules are evaluated every optimisation step from ``global_step``, so a resumed run
    continues them exactly.

    Args:
        backbone: a timm model built with ``num_classes=0``: ``backbone(x)`` gives (B, D) features.
        batch_size: images per device per step; with the world size and gradient accumulation it
            sets the total batch that scales the learning rate.
        optim: optimiser settings (the recipe's ``optim:`` section).
    """

    def __init__(self, backbone: nn.Module, batch_size: int, optim: OptimSettings | None) -> None:
        super().__init__()
        self.backbone = backbone
        self.optim = optim or OptimSettings()
        self.batch_size = batch_size
        self.teacher_scale, self.anchor_weight = 1.0, 0.0  # `init_levers` sets them
        self.anchor: StartAnchor | None = None

    def save_method_hparams(self) -> None:
        """Save the calling ``__init__``'s arguments (and those of the subclasses' ``__init__``
        that called it) as hyperparameters, without the backbone; ``optim`` as a plain dict."""
        frame = inspect.currentframe()
        self.save_hyperparameters(ignore=["backbone", "optim"], frame=frame and frame.f_back)
        self.hparams["optim"] = self.optim.to_dict()

    # --- levers for a pretrained start (`acclimate.ssl.anchor`) --------------------------------
    def init_levers(self, teacher_scale: float = 1.0, anchor_weight: float = 0.0) -> None:
        """Upsample the teacher's views by ``teacher_scale``; with ``anchor_weight`` > 0, keep a
        frozen copy of the backbone as it is now (the start) for `with_anchor`. Call it from the
        constructor, before the backbone trains."""
        check_levers(teacher_scale, anchor_weight)
        self.teacher_scale, self.anchor_weight = float(teacher_scale), float(anchor_weight)
        self.anchor = StartAnchor(self.backbone, teacher_scale) if anchor_weight > 0 else None

    def teacher_view(self, x: Tensor) -> Tensor:
        """A teacher's input: the view (B, C, H, W) upsampled by ``teacher_scale``."""
        return upsample(x, self.teacher_scale)

    def with_anchor(self, loss: Tensor, images: Tensor, feats: Tensor) -> Tensor:
        """``loss + anchor_weight * anchor(images, feats)``; ``loss`` without an anchor.

        images: (N, C, H, W) student views; feats: (N, D) the student backbone's features."""
        if self.anchor is None:
            return loss
        term = self.anchor(images, feats)
        self.log("anchor/loss", term.detach(), on_step=True, on_epoch=False, batch_size=len(feats))
        return loss + self.anchor_weight * term

    # The anchor is a copy of the start, rebuilt from the recipe: keep it out of checkpoints.
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        sd = checkpoint.get("state_dict", {})
        for k in [k for k in sd if k.startswith("anchor.")]:
            del sd[k]

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if self.anchor is not None:
            sd = checkpoint.setdefault("state_dict", {})
            for k, v in self.anchor.state_dict(prefix="anchor.").items():
                sd.setdefault(k, v)

    # --- what subclasses provide -------------------------------------------------------------
    def head_modules(self) -> list[nn.Module]:
        """Trainable modules other than the backbone (projection heads, predictors)."""
        raise NotImplementedError

    def export_backbone(self) -> nn.Module:
        """The backbone whose weights are exported and evaluated."""
        return self.backbone

    def networks(self) -> list[nn.Module]:
        """The backbone-sized networks a step runs: the student backbone and the anchor's frozen
        start; methods add their teachers. ``trainer.compile`` compiles these
        (`acclimate.ssl.compiled`); the heads are small and stay eager."""
        return [self.backbone] + ([self.anchor.net] if self.anchor is not None else [])

    @classmethod
    def check_backbone(cls, name: str) -> str | None:
        """Why this method cannot train timm model ``name`` (checked at config time, no model
        built), or None if it can. Methods that need a ViT (MAE, iBOT) override it."""
        return None

    # --- progress -------------------------------------------------------------------------------
    @property
    def steps_per_epoch(self) -> int:
        trainer = self.trainer
        batches = trainer.num_training_batches
        if not math.isfinite(batches) or batches <= 0:
            total = trainer.estimated_stepping_batches
            epochs = max(trainer.max_epochs or 1, 1)
            return max(int(total // epochs), 1)
        return max(math.ceil(batches / trainer.accumulate_grad_batches), 1)

    planned_steps: int | None = None  # set by a time budget (`acclimate.budget.TimeBudget`)

    @property
    def total_steps(self) -> int:
        """Optimisation steps of the whole run, which every schedule spans: the time budget's
        plan, else Lightning's estimate from epochs/steps (provisionally 10 epochs while a
        budget is still measuring the speed)."""
        if self.planned_steps:
            return self.planned_steps
        estimate = self.trainer.estimated_stepping_batches
        if not math.isfinite(estimate):
            return self.steps_per_epoch * 10
        return max(int(estimate), 1)

    @property
    def epoch_progress(self) -> float:
        """Optimisation steps done, in epochs (fractional)."""
        return self.global_step / self.steps_per_epoch

    @property
    def backbone_frozen(self) -> bool:
        return self.epoch_progress < self.optim.freeze_backbone_epochs

    @contextmanager
    def maybe_frozen(self) -> Iterator[None]:
        """Run the student backbone without gradient during the frozen warm-up."""
        with torch.no_grad() if self.backbone_frozen else nullcontext():
            yield

    @contextmanager
    def maybe_frozen_params(self) -> Iterator[None]:
        """Like `maybe_frozen`, but keeps the graph for inputs that train during the warm-up (a
        mask token): the backbone's parameters stop requiring gradient for the forward instead
        of disabling autograd, and are restored after it."""
        if not self.backbone_frozen:
            yield
            return
        params = [p for p in self.backbone.parameters() if p.requires_grad]
        for p in params:
            p.requires_grad_(False)
        try:
            yield
        finally:
            for p in params:
                p.requires_grad_(True)

    def log_loss(self, loss: Tensor, extra: dict[str, float | Tensor] | None = None) -> None:
        """Log ``train/loss`` (mean over ranks) and extra per-step values."""
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

    # --- optimisation ---------------------------------------------------------------------------
    def lr_factor(self) -> float:
        world = self.trainer.world_size * self.trainer.accumulate_grad_batches
        return self.batch_size * world / 256.0

    adam_betas: tuple[float, float] = (0.9, 0.999)  # MAE: (0.9, 0.95)

    def backbone_input_groups(self) -> list[dict]:
        """Parameter groups of method-owned inputs to the backbone (DINOv2's mask token): they
        train as the backbone's stem does. None by default."""
        return []

    def build_optimizer(self) -> torch.optim.Optimizer:
        """AdamW (or SGD) over the backbone's and the heads' parameter groups (each with its
        ``lr_scale``, ``apply_wd``, ``is_backbone`` and a ``name``); learning rates are set by
        the schedule."""
        o = self.optim
        groups = param_groups(
            self.backbone,
            lr_scale=o.backbone_lr_mult,
            layer_decay=o.layer_decay,
            patch_embed_lr_mult=o.patch_embed_lr_mult,
        )
        groups += self.backbone_input_groups()
        for g in groups:
            g["is_backbone"] = True
        for head in self.head_modules():
            groups += [{**g, "is_backbone": False} for g in param_groups(head, lr_scale=1.0)]
        name_groups(groups)
        if o.optimizer == "sgd":
            return torch.optim.SGD(groups, lr=0.0, momentum=0.9)
        return torch.optim.AdamW(groups, lr=0.0, weight_decay=o.weight_decay, betas=self.adam_betas)

    def configure_optimizers(self) -> dict[str, Any]:
        """The optimiser and a `StepSchedule` that Lightning steps after every optimiser step."""
        opt = self.build_optimizer()
        schedule = StepSchedule(opt, self.scheduled_lr, self.scheduled_wd)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    # --- gradient clipping: each paper's rule (``optim.clip_rule``) -----------------------------
    default_clip_rule: str = "none"  # SimCLR, MoCo v3, BYOL, MAE and distillation do not clip

    def clip_rule(self) -> str:
        return self.default_clip_rule if self.optim.clip_rule == "auto" else self.optim.clip_rule

    def clip_groups(self) -> list[list[nn.Parameter]]:
        """Parameter groups clipped separately by the ``per_module`` rule: the backbone, then
        each head (DINOv2's ``clip_grad_norm_`` per student sub-module)."""
        return [list(self.backbone.parameters())] + [
            list(h.parameters()) for h in self.head_modules()
        ]

    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        """Clip at ``trainer.gradient_clip_val`` by `clip_rule` (after gradients are unscaled
        and, under DDP, averaged)."""
        rule = self.clip_rule()
        if not gradient_clip_val or rule == "none":
            return
        if rule == "global":
            self.clip_gradients(optimizer, gradient_clip_val, "norm")
        elif rule == "per_param":  # DINO's utils.clip_gradients, fused over all parameters
            grads = [p.grad for p in self.parameters() if p.grad is not None]
            if grads:
                norms = torch._foreach_norm(grads)
                scale = [(gradient_clip_val / (n + 1e-6)).clamp(max=1.0) for n in norms]
                torch._foreach_mul_(grads, scale)
        else:  # per_module
            for params in self.clip_groups():
                grads = [p for p in params if p.grad is not None]
                if grads:
                    torch.nn.utils.clip_grad_norm_(grads, gradient_clip_val)

    def scheduled_lr(self, step: int, backbone: bool) -> float:
        """The learning rate at optimisation step ``step`` (before a group's ``lr_scale``):
        linear warm-up then cosine to ``min_lr``; the backbone's is 0 while it is frozen and its
        schedule starts when it thaws. The peak scales with the global batch, ``min_lr`` not."""
        o = self.optim
        spe, total = self.steps_per_epoch, self.total_steps
        warm = int(o.warmup_epochs * spe)
        if backbone:
            frozen = int(o.freeze_backbone_epochs * spe)
            if step < frozen:
                return 0.0
            step, total = step - frozen, max(total - frozen, 1)
        return warmup_cosine(step, total, o.lr * self.lr_factor(), o.min_lr, warm)

    def scheduled_wd(self, step: int) -> float:
        o = self.optim
        end = o.weight_decay if o.weight_decay_end is None else o.weight_decay_end
        return warmup_cosine(step, self.total_steps, o.weight_decay, end)

    def on_train_start(self) -> None:
        for config in self.trainer.lr_scheduler_configs:  # the run's length is known now
            if isinstance(config.scheduler, StepSchedule):
                config.scheduler.refresh()

    def on_train_batch_start(self, batch: object, batch_idx: int) -> None:
        self.set_backbone_mode(self.backbone)
        self.log_dict(
            {
                "wd": self.scheduled_wd(self.global_step),
                "backbone_frozen": float(self.backbone_frozen),
            },
            on_step=True,
            on_epoch=False,
            batch_size=self.batch_size,
        )

    def set_backbone_mode(self, backbone: nn.Module) -> None:
        """Train mode unless frozen; BatchNorm statistics stay pretrained when asked."""
        backbone.train(not self.backbone_frozen)
        if self.optim.freeze_norm_stats:
            for m in backbone.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()


class MomentumTeacherModule(SSLModule):
    """An `SSLModule` with EMA teachers (DINO, DINOv2, MoCo, BYOL).

    Subclasses set ``self.momentum_start`` / ``self.momentum_end`` and list the (EMA, online)
    module pairs in ``ema_pairs``. After every optimiser step each EMA module follows its online
    module (`update_ema`), with the momentum raised from start to end by a cosine schedule.
    The exported backbone is ``teacher_backbone``.
    """

    momentum_start: float = 0.996
    momentum_end: float = 1.0

    def ema_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        raise NotImplementedError

    def teacher_momentum(self) -> float:
        return cosine_momentum(
            self.global_step, self.total_steps, self.momentum_start, self.momentum_end
        )

    def export_backbone(self) -> nn.Module:
        return self.teacher_backbone

    def networks(self) -> list[nn.Module]:
        return [*super().networks(), self.teacher_backbone]

    def optimizer_step(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003 - Lightning's hook
        m = self.teacher_momentum()
        super().optimizer_step(*args, **kwargs)
        for ema, online in self.ema_pairs():
            update_ema(ema, online, m)
        self.after_optimizer_step()

    def after_optimizer_step(self) -> None:
        """Per-optimiser-step state after the EMA update (DINO's centres); none here."""

    def teacher_mode(self, *modules: nn.Module) -> None:
        """Teachers run without dropout or drop-path (eval mode) but, as in DINO, MoCo and BYOL,
        their BatchNorm layers normalise with the batch's statistics (train mode), unless
        ``optim.freeze_norm_stats`` keeps the pretrained ones (the default)."""
        for module in modules:
            module.eval()
            for m in module.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    is_backbone = module is getattr(self, "teacher_backbone", None)
                    m.train(not (is_backbone and self.optim.freeze_norm_stats))
