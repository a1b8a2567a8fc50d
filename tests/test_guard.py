"""A diverged or collapsed run stops with exit code 1 and never reaches a checkpoint or export."""

from __future__ import annotations

import math

import pytest
import torch
from test_cli import write_recipe

from acclimate.callbacks import AtomicCheckpointIO
from acclimate.cli import main
from acclimate.errors import TrainingFailed
from acclimate.guard import non_finite_tensors
from acclimate.ssl.diagnostics import embedding_spread, rankme, teacher_student_stats

FAST = ["eval.before_after=false", "eval.every_n_epochs=0", "trainer.max_epochs=3"]


def _finite(path) -> bool:
    state = torch.load(path, weights_only=True)["state_dict"]
    return not non_finite_tensors(state)


def test_divergence_stops_with_exit_1_and_keeps_the_last_good_checkpoint(
    tmp_path, tiny_dataset, capsys
):
    recipe = write_recipe(tmp_path, tiny_dataset, "test_resnet")
    run = tmp_path / "run"
    # one good epoch with checkpoints, then a resume whose learning rate makes it diverge
    assert main(["train", str(recipe), f"run_dir={run}", *FAST, "trainer.max_epochs=1"]) == 0
    good = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    capsys.readouterr()
    code = main(
        [
            "train",
            "--resume",
            str(run),
            "trainer.max_epochs=3",
            "optim.lr=1e30",
            "optim.freeze_backbone_epochs=0",
            "trainer.checkpoint_every_n_steps=1",
            "trainer.gradient_clip_val=null",
        ]
    )
    err = capsys.readouterr().err
    assert code == 1
    line = err.strip().splitlines()[-1]
    assert "diverged" in line and "optim.lr" in line
    files = sorted((run / "checkpoints").glob("*.ckpt"))
    assert files and all(_finite(f) for f in files)
    kept = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert kept["global_step"] == good["global_step"]
    assert all(torch.equal(kept["state_dict"][k], v) for k, v in good["state_dict"].items())


def test_collapse_signal_held_for_n_steps_stops_the_run(tmp_path, tiny_dataset, capsys):
    recipe = write_recipe(tmp_path, tiny_dataset, "test_resnet")
    run = tmp_path / "run"
    # a threshold no embedding can meet: the guard must stop after exactly 3 steps
    args = [*FAST, "trainer.collapse_spread=1e9", "trainer.collapse_steps=3"]
    assert main(["train", str(recipe), f"run_dir={run}", *args]) == 1
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert "collapsed" in line and "for 3 steps" in line and "step 3" in line
    assert not (run / "checkpoints" / "last.ckpt").exists()


def test_a_healthy_run_logs_collapse_diagnostics(tmp_path, tiny_dataset):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    recipe = write_recipe(tmp_path, tiny_dataset, "test_resnet")
    run = tmp_path / "run"
    assert main(["train", str(recipe), f"run_dir={run}", *FAST, "trainer.max_epochs=1"]) == 0
    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    for tag in ("spread", "rankme", "teacher_entropy", "teacher_batch_entropy", "kl"):
        assert f"collapse/{tag}" in tags
    spread = [e.value for e in acc.Scalars("collapse/spread")]
    assert all(0.02 < v < 2 for v in spread)
    entropy = [e.value for e in acc.Scalars("collapse/teacher_entropy")]
    assert all(0 <= v <= math.log(64) + 1e-4 for v in entropy)  # out_dim 64


def test_checkpoint_io_refuses_non_finite_weights(tmp_path):
    io = AtomicCheckpointIO()
    target = tmp_path / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}}, target)
    with pytest.raises(TrainingFailed, match="NaN or inf"):
        io.save_checkpoint({"state_dict": {"w": torch.tensor([1.0, float("nan")])}}, target)
    assert torch.equal(io.load_checkpoint(target)["state_dict"]["w"], torch.ones(3))
    assert list(tmp_path.iterdir()) == [target]  # no temporary file left behind


def test_non_finite_tensors_names_them():
    state = {"a": torch.ones(2), "b": {"c": torch.tensor([float("inf")])}, "n": torch.arange(3)}
    assert non_finite_tensors(state) == ["b.c"]


def test_embedding_spread_and_rankme_separate_healthy_from_collapsed():
    g = torch.Generator().manual_seed(0)
    healthy = torch.randn(256, 32, generator=g)
    collapsed = torch.ones(256, 32) + 1e-6 * torch.randn(256, 32, generator=g)
    assert embedding_spread(healthy) == pytest.approx(1.0, abs=0.05)
    assert embedding_spread(collapsed) < 1e-4
    assert 25 < rankme(healthy) <= 32
    assert rankme(collapsed) < 1.5
    rank4 = torch.randn(256, 4, generator=g) @ torch.randn(4, 32, generator=g)
    assert rankme(rank4) == pytest.approx(4, abs=1.0)


def test_teacher_student_stats_match_their_formulas():
    k = 8
    uniform = torch.full((4, k), 1.0 / k)
    one_hot = torch.nn.functional.one_hot(torch.zeros(4, dtype=torch.long), k).float()
    logits = torch.zeros(4, k)  # a uniform student
    u = teacher_student_stats(uniform, logits, 0.1)
    assert u["teacher_entropy"] == pytest.approx(math.log(k), abs=1e-5)
    assert u["teacher_batch_entropy"] == pytest.approx(math.log(k), abs=1e-5)
    assert u["kl"] == pytest.approx(0.0, abs=1e-5)
    h = teacher_student_stats(one_hot, logits, 0.1)
    assert h["teacher_entropy"] == pytest.approx(0.0, abs=1e-4)
    assert h["teacher_batch_entropy"] == pytest.approx(0.0, abs=1e-4)
    assert h["kl"] == pytest.approx(math.log(k), abs=1e-3)  # KL(one-hot || uniform)
