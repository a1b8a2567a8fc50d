"""Learning-rate and weight-decay schedules, evaluated per optimisation step."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler


def warmup_cosine(
    step: int,
    total_steps: int,
    base: float,
    final: float,
    warmup_steps: int = 0,
    start: float = 0.0,
) -> float:
    """Linear warm-up from ``start`` to ``base`` over ``warmup_steps``, then cosine to ``final``.

    The schedule of DINO's ``cosine_scheduler`` (Caron et al. 2021), as a pure function of the step.
    """
    if step < warmup_steps:
        return start + (base - start) * step / max(warmup_steps, 1)
    remaining = max(total_steps - warmup_steps, 1)
    progress = min((step - warmup_steps) / remaining, 1.0)
    return final + 0.5 * (base - final) * (1 + math.cos(math.pi * progress))


def linear_warmup(step: int, warmup_steps: int, start: float, end: float) -> float:
    """Linear ramp from ``start`` to ``end`` over ``warmup_steps``, then ``end`` (teacher temp)."""
    if warmup_steps <= 0 or step >= warmup_steps:
        return end
    return start + (end - start) * step / warmup_steps


class StepSchedule(LRScheduler):
    """Per-optimisation-step learning rate and weight decay of every parameter group, stepped by
    Lightning (``interval: step``, so once per optimiser step under gradient accumulation, and
    saved in checkpoints).

    Group ``g`` gets ``lr_at(step, g["is_backbone"]) * g["lr_scale"]`` and, when
    ``g["apply_wd"]``, ``wd_at(step)`` (weight decay 0 otherwise): DINO's per-iteration
    ``lr_schedule`` / ``wd_schedule`` (Caron et al. 2021). torch has no weight-decay scheduler;
    this one sets both from the same step counter.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        lr_at: Callable[[int, bool], float],
        wd_at: Callable[[int], float],
    ) -> None:
        self.lr_at, self.wd_at = lr_at, wd_at
        self.ready = False  # the schedule needs the run's length: `refresh` once training starts
        super().__init__(optimizer)
        self.ready = True

    def refresh(self) -> None:
        """Set every group's values for the current step (at the start of training, when the
        run's length is known, and after a resume)."""
        for g, lr in zip(self.optimizer.param_groups, self.get_lr(), strict=True):
            g["lr"] = lr
        self._last_lr = [g["lr"] for g in self.optimizer.param_groups]

    def get_lr(self) -> list[float]:
        if not self.ready:
            return [g["lr"] for g in self.optimizer.param_groups]
        step, wd = self.last_epoch, self.wd_at(self.last_epoch)
        lrs = []
        for g in self.optimizer.param_groups:
            g["weight_decay"] = wd if g.get("apply_wd", True) else 0.0
            lrs.append(self.lr_at(step, bool(g.get("is_backbone"))) * g.get("lr_scale", 1.0))
        return lrs

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        for key in ("lr_at", "wd_at", "ready"):  # functions of the module: rebuilt
            state.pop(key, None)
        return state
