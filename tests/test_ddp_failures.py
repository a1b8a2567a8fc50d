"""Real Lightning DDP on 2 CPU processes (gloo): the default strategy works with several
devices, and a rank that dies ends the whole job with a non-zero exit instead of a hang."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_cli import write_recipe

ROOT = Path(__file__).resolve().parents[1]
FAST = ["eval.before_after=false", "eval.every_n_epochs=0", "trainer.accelerator=cpu"]

# Training with a callback that kills one rank (os._exit, as a crash or an OOM kill would) at
# its second step. Lightning's launcher re-runs this script for rank 1, so both ranks have it.
DYING = """
import os, sys
import lightning.pytorch as pl
import acclimate.training as training

class Die(pl.Callback):
    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if trainer.global_rank == int(os.environ["DIE_RANK"]) and trainer.global_step == 1:
            os._exit(17)

build = training.TrainerSettings.build
training.TrainerSettings.build = lambda self, run_dir, cbs, seed=0: build(
    self, run_dir, [*cbs, Die()], seed=seed
)
from acclimate.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _alive(marker: str) -> list[str]:
    res = subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True)
    return res.stdout.split()


def test_two_devices_with_the_default_strategy_train(tmp_path, tiny_dataset):
    recipe = write_recipe(tmp_path, tiny_dataset, "test_resnet")
    run = tmp_path / "run"
    cmd = [sys.executable, str(ROOT / "train.py"), str(recipe), f"run_dir={run}", *FAST]
    cmd += ["trainer.devices=2", "trainer.max_epochs=1"]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    saved = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 2  # 36 images, 8 per process and step, 2 processes


@pytest.mark.parametrize("rank", [1, 0])
def test_a_dead_rank_ends_the_job(tmp_path, tiny_dataset, rank):
    recipe = write_recipe(tmp_path, tiny_dataset, "test_resnet")
    script = tmp_path / "dying_train.py"
    script.write_text(DYING)
    run = tmp_path / f"run-dies-{rank}-{os.getpid()}"  # unique: found again with pgrep
    cmd = [sys.executable, str(script), "train", str(recipe), f"run_dir={run}", *FAST]
    cmd += ["trainer.devices=2", "trainer.timeout_s=15", "trainer.max_epochs=2"]
    env = {**os.environ, "DIE_RANK": str(rank), "PYTHONPATH": str(ROOT)}
    start = time.time()
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=240)
    assert res.returncode != 0
    if rank == 1:  # the surviving rank 0 noticed and stopped
        assert res.returncode != 17, res.stderr[-2000:]
    deadline = time.time() + 60  # rank 1 outlives a dead rank 0 by at most the timeout
    while _alive(str(run)) and time.time() < deadline:
        time.sleep(0.5)
    assert not _alive(str(run)), "a rank is still running"
    assert time.time() - start < 120


def test_a_time_budget_ends_both_ranks_together(tmp_path, tiny_dataset):
    """``trainer.max_time`` on 2 ranks: rank 0 alone measures the start, so its clock and its
    deadline differ from rank 1's; the ranks must still plan, re-plan and stop together (one
    rank's extra broadcast hangs or misreads the other's collectives)."""
    recipe = write_recipe(tmp_path, tiny_dataset, "test_resnet")
    run = tmp_path / "run"
    cmd = [sys.executable, str(ROOT / "train.py"), str(recipe), f"run_dir={run}"]
    cmd += ["eval.every_n_epochs=0", "trainer.accelerator=cpu", "trainer.devices=2"]
    cmd += ["trainer.max_time=00:00:00:30"]
    start = time.monotonic()
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    assert time.monotonic() - start < 30 + 120  # start-up, imports and DDP spawn on top
    saved = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["global_step"] >= 1
    # on a quiet machine it plans after its first 11 steps and re-plans at each tenth of the
    # budget (where the old per-rank clocks hung); a loaded one may reach the deadline first
    metrics = json.loads((run / "metrics.json").read_text())
    assert "before" in metrics and "after" in metrics
