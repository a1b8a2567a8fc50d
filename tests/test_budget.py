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
