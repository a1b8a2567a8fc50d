"""A time budget for a run (``trainer.max_time``): the schedules span the time, not epochs.

The run measures its own throughput over its first steps, plans how many optimisation steps fit
in the time left (keeping back what the after-evaluation will need, measured on the
before-evaluation), and from then on every schedule (learning rate, weight decay, teacher
momentum and temperature) runs over that planned total. The first steps are rarely typical (caches
warm up, a shared machine's load changes), so the plan is revised from the speed measured since the
last plan at every tenth of the budget, until 70% of the planned steps are done; a revision that
changes the plan by less than 5% is not applied. Training stops at the planned step, and the
deadline stops it in any case, with its checkpoint.
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
    by ``max_steps`` (> 0). Every ``replan_fraction`` of the time left at the first plan, while
    fewer than ``replan_until`` of the planned steps are done, the plan is revised the same way
    from the speed since the last plan applied (the schedules then continue from the current step
    over the new total: a small jump early in the cosine, which a revision under 5% skips).
    Training stops at the planned step or at the deadline, whichever comes first, and writes its
    checkpoint. The plan is stored in checkpoints, so a resumed run keeps its schedules (its
    clock starts again).

    The module reads the plan through its ``planned_steps`` attribute (`SSLModule.total_steps`).
    """

    def __init__(
        self,
        deadline: float,
        measure_steps: int = 10,
        max_steps: int = -1,
        replan_fraction: float = 0.1,
        replan_until: float = 0.7,
    ) -> None:
        self.deadline = deadline
        self.measure_steps = max(measure_steps, 1)
        self.max_steps = max_steps
        self.replan_fraction = replan_fraction
        self.replan_until = replan_until
        self.planned: int | None = None
        self.revisions = 0
        self._timed_from: tuple[float, int] | None = None
        self._replan_every = float("inf")
        self._last_step: int | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"planned": self.planned}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.planned = state.get("planned")

    def _apply(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        module.planned_steps = self.planned
        trainer.fit_loop.epoch_loop.max_steps = self.planned

    def on_train_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if self.planned is None:
            return
        self._apply(trainer, module)
        if trainer.global_step >= self.planned:
            log.warning(
                "this run already did the %d steps its time budget planned: nothing is left "
                "to train (a new trainer.max_time does not extend a planned run; start a new "
                "run from its export to train further)",
                self.planned,
            )

    def on_train_batch_end(
        self, trainer: pl.Trainer, module: pl.LightningModule, *args: Any, **kwargs: Any
    ) -> None:
        now, step = time.monotonic(), trainer.global_step
        if step == self._last_step:
            return  # inside a gradient accumulation: stop only between optimisation steps
        self._last_step = step
        first_batch = self._timed_from is None
        if first_batch:
            self._timed_from = (now, step)  # the first step (start-up) is not timed
        due = None if first_batch else self._due(now, step, trainer)
        # one collective per batch, rank 0's clock decides for every rank: each rank's own
        # clock (rank 0 alone measures the start, so its deadline is earlier) would have the
        # ranks stop or re-plan at different steps, and the re-plan's broadcast pair with
        # another rank's next one
        out_of_time, due = trainer.strategy.broadcast((now >= self.deadline, due))
        if out_of_time and not trainer.should_stop:
            log.info("time budget reached at step %d: stopping with a checkpoint", step)
            trainer.should_stop = True
        if due == "first" or (due == "revise" and not trainer.should_stop):
            self._plan(trainer, module, now, step, first=due == "first")

    def _due(self, now: float, step: int, trainer: pl.Trainer) -> str | None:
        """``first`` when the speed is measured, ``revise`` at each tenth of the budget."""
        t0, s0 = self._timed_from
        if self.planned is None:
            return "first" if step - s0 >= self.measure_steps else None
        if now - t0 >= self._replan_every and step > s0 and step < self.replan_until * self.planned:
            return "revise"
        return None

    def _plan(
        self, trainer: pl.Trainer, module: pl.LightningModule, now: float, step: int, first: bool
    ) -> None:
        """Plan (or revise) the total steps from the speed since ``_timed_from``."""
        t0, s0 = self._timed_from
        per_step = (now - t0) / max(step - s0, 1)
        left = self.deadline - now
        planned = step + max(int(left / per_step), 0)
        planned = trainer.strategy.broadcast(planned)  # every rank follows rank 0's plan
        if self.max_steps > 0:
            planned = min(planned, self.max_steps)
        planned = max(planned, step + 1)
        if first:
            self._replan_every = self.replan_fraction * max(left, 0.0)
        elif abs(planned - self.planned) < 0.05 * self.planned:
            return  # keep timing from the last plan: a longer window, a steadier estimate
        self._timed_from = (now, step)
        old, self.planned = self.planned, planned
        self._apply(trainer, module)
        epochs = self.planned / max(module.steps_per_epoch, 1)
        if first:
            log.info(
                "time budget: %.1f s/step measured over %d steps; %.0f s left for training: "
                "planning %d steps in all (%.1f epochs); the schedules span them",
                per_step,
                step - s0,
                left,
                self.planned,
                epochs,
            )
            self._warn_long_warmup(module)
        else:
            self.revisions += 1
            log.info(
                "time budget: %.2f s/step over the last %d steps; %.0f s left: revising the plan "
                "from %d to %d steps (%.1f epochs) at step %d",
                per_step,
                step - s0,
                left,
                old,
                self.planned,
                epochs,
                step,
            )

    def _warn_long_warmup(self, module: pl.LightningModule) -> None:
        """Warm-up and frozen phases are set in epochs: under a short budget they can fill it."""
        optim = getattr(module, "optim", None)
        if optim is None or not self.planned:
            return
        epochs = optim.warmup_epochs + optim.freeze_backbone_epochs
        steps = int(epochs * module.steps_per_epoch)
        if steps > 0.25 * self.planned:
            log.warning(
                "optim.warmup_epochs + optim.freeze_backbone_epochs = %.2g epochs = %d steps, "
                "%.0f%% of the %d steps this budget allows: the backbone spends most of the "
                "run warming up; lower them (fractions of an epoch are allowed)",
                epochs,
                steps,
                100 * steps / self.planned,
                self.planned,
            )
