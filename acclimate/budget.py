"""A time budget for a run (``trainer.max_time``): the schedules span the time, not epochs.

The run measures its own throughput over its first steps, plans how many optimisation steps fit
in the time left (keeping back what the after-evaluation will need, measured on the
before-evaluation), and from then on every schedule (learning rate, weight decay, teacher
momentum and temperature) runs over that planned total; training stops at the planned step, and
Lightning's timer stops it at the budget in any case, with its checkpoint.
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta
from typing import Any

import lightning.pytorch as pl

log = logging.getLogger(__name__)


def parse_duration(text: str) -> timedelta:
    """``DD:HH:MM:SS`` (Lightning's format), ``HH:MM:SS`` or ``MM:SS`` -> a timedelta > 0."""
    parts = str(text).strip().split(":")
    if not 2 <= len(parts) <= 4 or not all(p.strip().isdigit() for p in parts):
        raise ValueError(f"expected DD:HH:MM:SS (e.g. 00:00:30:00), got {text!r}")
    values = [0] * (4 - len(parts)) + [int(p) for p in parts]
    days, hours, minutes, seconds = values
    duration = timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)
    if duration.total_seconds() <= 0:
        raise ValueError(f"must be a positive duration, got {text!r}")
    return duration


class TimeBudget(pl.Callback):
    """Plan the run's total optimisation steps from its measured speed.

    Training must end by ``deadline`` (a ``time.monotonic()`` value; set it before training:
    the run's start plus its budget, less what the after-evaluation needs). After
    ``measure_steps`` steps (the first one, which pays for start-up, is not timed), the planned
    total is the steps done plus the time left divided by the measured seconds per step, capped
    by ``max_steps`` (> 0); training stops at the planned step or at the deadline, whichever
    comes first, and writes its checkpoint. The plan is stored in checkpoints, so a resumed run
    keeps its schedules (its clock starts again).

    The module reads the plan through its ``planned_steps`` attribute (`SSLModule.total_steps`).
    """

    def __init__(self, deadline: float, measure_steps: int = 10, max_steps: int = -1) -> None:
        self.deadline = deadline
        self.measure_steps = max(measure_steps, 1)
        self.max_steps = max_steps
        self.planned: int | None = None
        self._timed_from: tuple[float, int] | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"planned": self.planned}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.planned = state.get("planned")

    def _apply(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        module.planned_steps = self.planned
        trainer.fit_loop.epoch_loop.max_steps = self.planned

    def on_train_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if self.planned is not None:
            self._apply(trainer, module)

    def on_train_batch_end(
        self, trainer: pl.Trainer, module: pl.LightningModule, *args: Any, **kwargs: Any
    ) -> None:
        now, step = time.monotonic(), trainer.global_step
        out_of_time = trainer.strategy.broadcast(now >= self.deadline)
        if out_of_time and not trainer.should_stop:
            log.info("time budget reached at step %d: stopping with a checkpoint", step)
            trainer.should_stop = True
        if self.planned is not None:
            return
        if self._timed_from is None:
            self._timed_from = (now, step)  # the first step (start-up) is not timed
            return
        t0, s0 = self._timed_from
        if step - s0 < self.measure_steps:
            return
        per_step = (now - t0) / (step - s0)
        left = self.deadline - now
        planned = step + max(int(left / per_step), 0)
        planned = trainer.strategy.broadcast(planned)  # every rank follows rank 0's plan
        if self.max_steps > 0:
            planned = min(planned, self.max_steps)
        self.planned = max(planned, step + 1)
        self._apply(trainer, module)
        epochs = self.planned / max(module.steps_per_epoch, 1)
        log.info(
            "time budget: %.1f s/step measured over %d steps; %.0f s left for training: "
            "planning %d steps in all (%.1f epochs); the schedules span them",
            per_step,
            step - s0,
            left,
            self.planned,
            epochs,
        )
