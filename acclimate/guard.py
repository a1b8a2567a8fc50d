"""Stop a run that diverged or collapsed, before it reaches a checkpoint or an export."""

from __future__ import annotations

import logging
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor

from acclimate.errors import TrainingFailed
from acclimate.ssl.diagnostics import embedding_spread, rankme

log = logging.getLogger(__name__)

DIVERGED_HINT = (
    "lower optim.lr (e.g. by 10x), keep trainer.gradient_clip_val on, or use "
    "trainer.precision=bf16-mixed instead of 16-mixed; resume from the last good checkpoint with "
    "`acclimate train --resume RUN_DIR optim.lr=...`"
)


def non_finite_tensors(state: dict[str, Any]) -> list[str]:
    """Names of the floating-point tensors in a (nested) state dict that hold NaN or inf."""
    bad: list[str] = []

    def walk(obj: Any, name: str) -> None:
        if isinstance(obj, Tensor):
            if obj.is_floating_point() and not bool(torch.isfinite(obj).all()):
                bad.append(name)
        elif isinstance(obj, dict):
            for k, v in obj.items():
                walk(v, f"{name}.{k}" if name else str(k))
        elif isinstance(obj, (list, tuple)):
            for i, v in enumerate(obj):
                walk(v, f"{name}[{i}]")

    walk(state, "")
    return bad


class TrainingGuard(pl.Callback):
    """Check every step's loss for NaN/inf and watch the student's embeddings for collapse.

    A non-finite loss stops the run at once (all ranks agree first). Collapse: the spread of the
    student backbone's embeddings across the batch (`embedding_spread`: about 1 when spread over
    the sphere, 0 when every image maps to one point) below ``collapse_spread`` for
    ``collapse_steps`` consecutive steps stops it too (0 steps: watch and log only). Logged to
    TensorBoard every ``log_every_n_steps``: ``collapse/spread`` and ``collapse/rankme`` (the
    effective rank of the embeddings, Garrido et al. 2023).
    """

    def __init__(self, collapse_spread: float = 0.02, collapse_steps: int = 200) -> None:
        self.collapse_spread = collapse_spread
        self.collapse_steps = collapse_steps
        self._z: Tensor | None = None
        self._low = 0
        self._hook: Any = None

    # the first (B, D) output of the student backbone in each step
    def _capture(self, module: Any, inputs: Any, output: Any) -> None:
        if self._z is None and isinstance(output, Tensor) and output.ndim == 2:
            self._z = output.detach()

    def on_train_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        backbone = getattr(module, "backbone", None)
        if isinstance(backbone, torch.nn.Module):
            self._hook = backbone.register_forward_hook(self._capture)

    def on_train_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    def on_exception(
        self, trainer: pl.Trainer, module: pl.LightningModule, exception: BaseException
    ) -> None:
        self.on_train_end(trainer, module)

    def on_train_batch_start(
        self, trainer: pl.Trainer, module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._z = None

    def on_before_backward(
        self, trainer: pl.Trainer, module: pl.LightningModule, loss: Tensor
    ) -> None:
        finite = bool(torch.isfinite(loss.detach()).all())
        if trainer.world_size > 1:  # every rank stops together, or none does
            finite = trainer.strategy.reduce_boolean_decision(finite, all=True)
        if not finite:
            raise TrainingFailed(
                f"the loss became {float(loss.detach())} at step {trainer.global_step} "
                f"(epoch {trainer.current_epoch}): training diverged; nothing after the last "
                f"good checkpoint was saved. To fix: {DIVERGED_HINT}"
            )

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        z, self._z = self._z, None
        if z is None or z.shape[0] < 2:
            return
        spread = float(embedding_spread(z))
        if trainer.global_step % max(trainer.log_every_n_steps, 1) == 0:
            values = {"collapse/spread": spread, "collapse/rankme": float(rankme(z))}
            for lg in trainer.loggers:
                lg.log_metrics(values, step=trainer.global_step)
        self._low = self._low + 1 if spread < self.collapse_spread else 0
        stop = bool(self.collapse_steps) and self._low >= self.collapse_steps
        if self.collapse_steps and trainer.world_size > 1:
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        if stop:
            raise TrainingFailed(
                f"the embeddings collapsed: their spread across the batch stayed below "
                f"{self.collapse_spread} for {self._low} steps (now {spread:.2e}, step "
                f"{trainer.global_step}); every image maps to nearly the same point. To fix: "
                "lower optim.lr, raise method.momentum_teacher (DINO family) or "
                "optim.freeze_backbone_epochs, or lower method.teacher_temp; resume from an "
                "earlier checkpoint"
            )
