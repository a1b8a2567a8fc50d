"""``trainer.max_time``: the run plans its steps from its measured speed and ends in time with
its checkpoint and before/after evidence; the schedules span the plan."""

from __future__ import annotations

import json
import time
from datetime import timedelta

import pytest
import torch
from test_cli import write_recipe

from acclimate.budget import parse_duration
from acclimate.cli import main
from acclimate.config import ConfigError, load_recipe


def test_parse_duration():
    assert parse_duration("00:00:30:00") == timedelta(minutes=30)
    assert parse_duration("01:02:03") == timedelta(hours=1, minutes=2, seconds=3)
    assert parse_duration("1:30") == timedelta(minutes=1, seconds=30)
    for bad in ("30m", "00:00:00:00", "1:2:3:4:5", "-1:00"):
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_max_time_ends_in_time_with_checkpoint_and_evidence(tmp_path, tiny_dataset, caplog):
    recipe = write_recipe(tmp_path, tiny_dataset, "test_resnet")
    run = tmp_path / "run"
    budget = 25
    start = time.monotonic()
    args = ["train", str(recipe), f"run_dir={run}", f"trainer.max_time=00:00:00:{budget}"]
    with caplog.at_level("INFO"):
        assert main([*args, "eval.every_n_epochs=0", "optim.min_lr=1e-8"]) == 0
    elapsed = time.monotonic() - start
    assert elapsed < budget + 30  # imports come on top of the budget (it starts with the run)
    plan = [r.getMessage() for r in caplog.records if "planning" in r.getMessage()]
    assert len(plan) == 1, "the plan is logged once"
    planned = int(plan[0].split("planning ")[1].split()[0])
    revised = [r.getMessage() for r in caplog.records if "revising the plan" in r.getMessage()]
    if revised:  # the speed changed during the run: the last revision is the plan
        planned = int(revised[-1].split(" to ")[1].split()[0])
    saved = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    steps = saved["global_step"]
    assert 11 < steps <= planned
    assert steps > 4 * 2  # more than the 2 epochs the recipe's max_epochs would allow
    metrics = json.loads((run / "metrics.json").read_text())
    assert "before" in metrics and "after" in metrics
    if steps == planned:  # ended on plan: the cosine schedule reached its floor
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        acc = EventAccumulator(str(run / "tensorboard"))
        acc.Reload()
        lr = acc.Scalars("lr-AdamW/head")
        assert lr[-1].value < 0.05 * max(e.value for e in lr)


def test_max_time_is_checked_at_load(tmp_path, tiny_dataset):
    recipe = write_recipe(tmp_path, tiny_dataset, "test_resnet")
    with pytest.raises(ConfigError, match="trainer.max_time"):
        load_recipe(recipe, ["trainer.max_time=30min"])


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class _Strategy:
    def broadcast(self, value):
        return value


class _FakeTrainer:
    """What TimeBudget touches: the step, the strategy and the epoch loop's max_steps."""

    def __init__(self) -> None:
        from types import SimpleNamespace

        self.global_step = 0
        self.should_stop = False
        self.strategy = _Strategy()
        self.fit_loop = SimpleNamespace(epoch_loop=SimpleNamespace(max_steps=-1))


def _simulate(monkeypatch, seconds_per_step, deadline: float):
    """Run a TimeBudget over fake steps whose duration ``seconds_per_step(step)`` gives."""
    from types import SimpleNamespace

    from acclimate import budget as budget_mod

    clock = _Clock()
    monkeypatch.setattr(budget_mod.time, "monotonic", clock)
    cb = budget_mod.TimeBudget(deadline=deadline, measure_steps=10)
    trainer = _FakeTrainer()
    module = SimpleNamespace(steps_per_epoch=100, planned_steps=None, optim=None)
    while not trainer.should_stop and trainer.global_step != trainer.fit_loop.epoch_loop.max_steps:
        clock.now += seconds_per_step(trainer.global_step)
        trainer.global_step += 1
        cb.on_train_batch_end(trainer, module)
    return cb, trainer, clock


def test_the_plan_is_revised_when_the_machine_gets_faster(monkeypatch):
    # 1 s a step while measuring, then 0.5 s: the first plan (about 1000 steps) is revised
    # upwards so the run uses its budget instead of ending at half of it
    cb, trainer, clock = _simulate(monkeypatch, lambda s: 1.0 if s < 20 else 0.5, 1000.0)
    assert cb.revisions >= 1
    assert trainer.global_step == cb.planned > 1200
    assert clock.now <= 1000.0 and clock.now > 850.0, "the budget is used, and not overrun"


def test_the_plan_is_revised_down_when_the_machine_gets_slower(monkeypatch):
    cb, trainer, clock = _simulate(monkeypatch, lambda s: 0.5 if s < 30 else 1.0, 1000.0)
    assert cb.revisions >= 1
    assert trainer.global_step == cb.planned, "it ends on plan (the cosine reaches its floor)"
    assert clock.now <= 1000.0


def test_a_steady_speed_keeps_the_first_plan(monkeypatch):
    cb, trainer, clock = _simulate(monkeypatch, lambda s: 1.0, 500.0)
    assert cb.revisions == 0
    assert trainer.global_step == cb.planned == 500
