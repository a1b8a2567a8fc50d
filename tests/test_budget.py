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
    assert metrics["before_seconds"] > 0, "kept so that a resumed run reserves time for it"
    if steps == planned:  # ended on plan: the cosine schedule reached its floor
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        acc = EventAccumulator(str(run / "tensorboard"))
        acc.Reload()
        lr = acc.Scalars("lr-AdamW/head")
        assert lr[-1].value < 0.05 * max(e.value for e in lr)
        # resuming a run that did its whole plan trains nothing, says so, and keeps the plan
        caplog.clear()
        with caplog.at_level("WARNING"):
            assert main(["train", "--resume", str(run)]) == 0
        assert any("nothing is left to train" in r.getMessage() for r in caplog.records)
        again = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
        assert again["global_step"] == steps


def test_max_time_is_checked_at_load(tmp_path, tiny_dataset):
    recipe = write_recipe(tmp_path, tiny_dataset, "test_resnet")
    with pytest.raises(ConfigError, match="trainer.max_time"):
        load_recipe(recipe, ["trainer.max_time=30min"])
    # YAML 1.1 reads an unquoted 1:30:00 as 5400 (seconds, sexagesimal): say so, and how to fix
    with pytest.raises(ConfigError, match=r"trainer.max_time.*5400.*as a number.*quotes"):
        load_recipe(recipe, ["trainer.max_time=1:30:00"])


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


def _simulate(monkeypatch, seconds_per_step, deadline: float, accumulate: int = 1):
    """Run a TimeBudget over fake steps whose duration ``seconds_per_step(step)`` gives."""
    from types import SimpleNamespace

    from acclimate import budget as budget_mod

    clock = _Clock()
    monkeypatch.setattr(budget_mod.time, "monotonic", clock)
    cb = budget_mod.TimeBudget(deadline=deadline, measure_steps=10)
    trainer = _FakeTrainer()
    module = SimpleNamespace(steps_per_epoch=100, planned_steps=None, optim=None)
    batch = 0
    while not trainer.should_stop and trainer.global_step != trainer.fit_loop.epoch_loop.max_steps:
        clock.now += seconds_per_step(trainer.global_step) / accumulate
        batch += 1
        if batch % accumulate == 0:
            trainer.global_step += 1
        cb.on_train_batch_end(trainer, module)
    return cb, trainer, clock, batch


def test_the_plan_is_revised_when_the_machine_gets_faster(monkeypatch):
    # 1 s a step while measuring, then 0.5 s: the first plan (about 1000 steps) is revised
    # upwards so the run uses its budget instead of ending at half of it
    cb, trainer, clock, _ = _simulate(monkeypatch, lambda s: 1.0 if s < 20 else 0.5, 1000.0)
    assert cb.revisions >= 1
    assert trainer.global_step == cb.planned > 1200
    assert clock.now <= 1000.0 and clock.now > 850.0, "the budget is used, and not overrun"


def test_the_plan_is_revised_down_when_the_machine_gets_slower(monkeypatch):
    cb, trainer, clock, _ = _simulate(monkeypatch, lambda s: 0.5 if s < 30 else 1.0, 1000.0)
    assert cb.revisions >= 1
    assert trainer.global_step == cb.planned, "it ends on plan (the cosine reaches its floor)"
    assert clock.now <= 1000.0


def test_a_steady_speed_keeps_the_first_plan(monkeypatch):
    cb, trainer, clock, _ = _simulate(monkeypatch, lambda s: 1.0, 500.0)
    assert cb.revisions == 0
    assert trainer.global_step == cb.planned == 500


def test_the_deadline_stops_between_optimisation_steps(monkeypatch):
    # 4 micro-batches a step: a stop in the middle of one would lose its gradients on resume
    # (the checkpoint records the batch position)
    cb, trainer, clock, batches = _simulate(
        monkeypatch, lambda s: 1.0 if s < 150 else 3.0, 200.0, 4
    )
    assert trainer.should_stop and clock.now >= 200.0, "the slowdown makes the deadline stop it"
    assert batches % 4 == 0 and trainer.global_step == batches // 4


class _Rank:
    """One rank of a 2-process run whose ``broadcast`` is paired, call by call, with rank 0's."""

    def __init__(self, rank: int, sent: list) -> None:
        self.rank, self.sent, self.calls = rank, sent, 0

    def broadcast(self, value):
        self.calls += 1
        if self.rank == 0:
            self.sent.append(value)
            return value
        return self.sent[self.calls - 1]


def test_ranks_with_different_clocks_stop_and_replan_together(monkeypatch):
    """Rank 0 measures the start alone, so its deadline is earlier than the other ranks'; the
    ranks must still make the same collectives and follow one plan and one stop."""
    from types import SimpleNamespace

    from acclimate import budget as budget_mod

    clock = _Clock()
    monkeypatch.setattr(budget_mod.time, "monotonic", clock)
    sent: list = []
    ranks = []
    for rank, deadline in ((0, 935.0), (1, 995.0)):
        trainer = _FakeTrainer()
        trainer.strategy = _Rank(rank, sent)
        cb = budget_mod.TimeBudget(deadline=deadline, measure_steps=10)
        module = SimpleNamespace(steps_per_epoch=100, planned_steps=None, optim=None)
        ranks.append((cb, trainer, module))
    while not any(
        t.should_stop or t.global_step == t.fit_loop.epoch_loop.max_steps for _, t, _ in ranks
    ):
        clock.now += 1.0 if ranks[0][1].global_step < 300 else 0.6  # faster: a revision
        for cb, trainer, module in ranks:  # rank 0 first, as its broadcast is the source
            trainer.global_step += 1
            cb.on_train_batch_end(trainer, module)
    (cb0, t0, _), (cb1, t1, _) = ranks
    assert cb0.revisions >= 1, "the speed-up is seen"
    assert t0.strategy.calls == t1.strategy.calls, "the same collectives on both ranks"
    assert cb0.planned == cb1.planned and cb0.revisions == cb1.revisions
    assert t0.should_stop == t1.should_stop
    assert t0.fit_loop.epoch_loop.max_steps == t1.fit_loop.epoch_loop.max_steps
