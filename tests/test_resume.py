"""Exact resume: a run killed with SIGKILL and resumed ends with bit-identical weights.

Each case trains a tiny recipe in a subprocess (the real CLI), kills it with SIGKILL once a given
checkpoint has been written, resumes it with ``acclimate train --resume`` and compares every
tensor of the final checkpoint with an uninterrupted run's (``torch.equal``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_cli import write_recipe

from acclimate.resume import (
    ResumableSampler,
    checkpoints_newest_first,
    item_seed,
    latest_checkpoint,
    remove_orphans,
)

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
# 36 training images, batch 8: 4 steps per epoch, 3 epochs
COMMON = [
    "trainer.max_epochs=3",
    "trainer.checkpoint_every_n_steps=1",
    "eval.before_after=false",
    "eval.every_n_epochs=0",
    "optim.lr=0.05",
]
MOCO = """method:
  name: moco
  hidden_dim: 32
  dim: 16
  momentum: 0.9
"""
MAE = """method:
  name: mae
  decoder_dim: 16
  decoder_depth: 1
  decoder_heads: 2
"""
SECTION = {"dino": None, "moco": MOCO, "mae": MAE}
BACKBONE = {"dino": "test_resnet", "moco": "test_resnet", "mae": "test_vit"}


def _cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "acclimate.cli", "train", *args]


def _run(cmd: list[str], cwd: Path) -> None:
    res = subprocess.run(cmd, capture_output=True, text=True, env=ENV, cwd=cwd, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]


def _train_and_kill(cmd: list[str], cwd: Path, ready: str) -> None:
    """Start training; SIGKILL it as soon as checkpoints/``ready`` exists."""
    run_dir = Path(next(a.split("=", 1)[1] for a in cmd if a.startswith("run_dir=")))
    proc = subprocess.Popen(
        cmd, cwd=cwd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.time() + 300
    while not (run_dir / "checkpoints" / ready).exists():
        if proc.poll() is not None:
            raise AssertionError(f"training ended before {ready}: {proc.stderr.read()[-3000:]}")
        assert time.time() < deadline, f"{ready} never appeared"
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    saved = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 12
    return saved["state_dict"]


def _assert_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} of {len(a)} tensors differ, e.g. {different[:3]}"


def _kill_and_resume(tmp_path: Path, data: Path, method: str, ready: str, extra: list[str]):
    recipe = write_recipe(tmp_path, data, BACKBONE[method])
    if SECTION[method]:  # the same recipe with another method's section instead of DINO's
        text = recipe.read_text()
        start, end = text.index("method:"), text.index("optim:")
        recipe.write_text(text[:start] + SECTION[method] + text[end:])
    args = [str(recipe), *COMMON, *extra]
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    _run(_cmd(*args, f"run_dir={reference}"), tmp_path)
    _train_and_kill(_cmd(*args, f"run_dir={killed}"), tmp_path, ready)
    _run(_cmd("--resume", str(killed)), tmp_path)
    _assert_identical(_weights(reference), _weights(killed))
    # the reference run itself differs from a run with another seed: the check can fail
    return reference


def test_dino_killed_mid_epoch_resumes_bit_identical(tmp_path, tiny_dataset):
    reference = _kill_and_resume(tmp_path, tiny_dataset, "dino", "step0000006.ckpt", [])
    other = tmp_path / "other-seed"
    recipe = tmp_path / "recipe.yaml"
    _run(_cmd(str(recipe), *COMMON, "seed=1", f"run_dir={other}"), tmp_path)
    ref, oth = _weights(reference), _weights(other)
    assert any(not torch.equal(ref[k], oth[k]) for k in ref)


def test_moco_killed_mid_epoch_resumes_bit_identical(tmp_path, tiny_dataset):
    _kill_and_resume(tmp_path, tiny_dataset, "moco", "step0000005.ckpt", [])


def test_mae_random_masks_continue_exactly_after_a_kill(tmp_path, tiny_dataset):
    """MAE draws its masks from the main process's generator: restored from the checkpoint."""
    _kill_and_resume(tmp_path, tiny_dataset, "mae", "step0000007.ckpt", [])


@pytest.mark.slow
@pytest.mark.parametrize("method", ["dino", "moco", "mae"])
@pytest.mark.parametrize(
    ("ready", "extra"),
    [
        ("epoch000.ckpt", ["trainer.checkpoint_every_n_steps=0"]),  # at an epoch boundary
        ("step0000004.ckpt", []),  # the last step of an epoch
        ("step0000002.ckpt", ["data.num_workers=2"]),  # loader workers
        ("step0000009.ckpt", ["eval.every_n_epochs=1"]),  # with the kNN monitor
    ],
)
def test_killed_anywhere_resumes_bit_identical(tmp_path, tiny_dataset, method, ready, extra):
    _kill_and_resume(tmp_path, tiny_dataset, method, ready, extra)


# --- the pieces -----------------------------------------------------------------------------------
def test_sampler_resumes_where_it_stopped_and_orders_differ_per_epoch():
    s = ResumableSampler(10, seed=3)
    s.set_epoch(2)
    full = list(s)
    s.resume(2, 4)
    assert list(s) == full[4:]
    assert list(s) == full  # the skip applies to one pass only
    s.set_epoch(3)
    assert [i for i, _ in s] != [i for i, _ in full]
    assert sorted(i for i, _ in full) == list(range(10))
    assert full[0][1] == item_seed(3, 2, full[0][0])
    s.resume(1, 4)  # another epoch: nothing skipped
    s.set_epoch(2)
    assert list(s) == full


def test_item_seeds_are_distinct():
    seeds = {item_seed(0, e, i) for e in range(5) for i in range(1000)}
    assert len(seeds) == 5000
    assert all(0 <= s < 2**63 for s in seeds)


def test_newest_checkpoint_wins_and_orphans_are_removed(tmp_path):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    for i, name in enumerate(["epoch000.ckpt", "last.ckpt", "step0000007.ckpt"]):
        (folder / name).write_bytes(b"x")
        os.utime(folder / name, ns=(10**18 + i, 10**18 + i))
    orphan = folder / ".last.ckpt.tmp-999999999"
    orphan.write_bytes(b"partial")
    live = folder / f".last.ckpt.tmp-{os.getppid()}"  # a running writer's file stays
    live.write_bytes(b"partial")
    assert latest_checkpoint(tmp_path) == folder / "step0000007.ckpt"
    assert [p.name for p in checkpoints_newest_first(tmp_path)][-1] == "epoch000.ckpt"
    assert remove_orphans(folder) == [orphan]
    assert not orphan.exists() and live.exists()
    assert latest_checkpoint(tmp_path / "nothing") is None


def test_only_the_newest_epoch_checkpoints_are_kept(tmp_path, tiny_dataset):
    """trainer.keep_checkpoints: the newest k periodic epoch checkpoints stay, older ones go
    (also across a resume); last.ckpt always; the run still resumes, exports and evaluates."""
    from acclimate.cli import main

    recipe = write_recipe(tmp_path, tiny_dataset, "test_resnet")
    run = tmp_path / "run"
    quiet = ["eval.before_after=false", "eval.every_n_epochs=0"]
    args = ["train", str(recipe), f"run_dir={run}", "trainer.max_epochs=4", *quiet]
    assert main([*args, "trainer.keep_checkpoints=2"]) == 0

    def names() -> list[str]:
        return sorted(p.name for p in (run / "checkpoints").glob("*.ckpt"))

    assert names() == ["epoch002.ckpt", "epoch003.ckpt", "last.ckpt"]
    assert latest_checkpoint(run) == run / "checkpoints" / "last.ckpt"
    assert main(["train", "--resume", str(run), "trainer.max_epochs=5"]) == 0
    assert names() == ["epoch003.ckpt", "epoch004.ckpt", "last.ckpt"]
    assert torch.load(latest_checkpoint(run), weights_only=True)["global_step"] == 5 * 4
    assert main(["export", str(run), "--out", str(tmp_path / "export")]) == 0
    data = ["--data", str(tiny_dataset), "--out", str(tmp_path / "report")]
    assert main(["evaluate", str(run), *data]) == 0

    every = tmp_path / "every"  # -1 keeps them all
    args = ["train", str(recipe), f"run_dir={every}", "trainer.max_epochs=4", *quiet]
    assert main([*args, "trainer.keep_checkpoints=-1"]) == 0
    assert len(list((every / "checkpoints").glob("epoch*.ckpt"))) == 4


def test_keep_checkpoints_is_checked_at_load(tmp_path, tiny_dataset):
    from acclimate.config import ConfigError, load_recipe

    recipe = write_recipe(tmp_path, tiny_dataset, "test_resnet")
    with pytest.raises(ConfigError, match="trainer.keep_checkpoints"):
        load_recipe(recipe, ["trainer.keep_checkpoints=0"])
    assert load_recipe(recipe).data["trainer"]["keep_checkpoints"] == 3


def test_last_checkpoint_holds_the_final_weights_between_periodic_saves(tmp_path, tiny_dataset):
    """checkpoint_every_n_epochs=2 with 3 epochs: Lightning's own last.ckpt stays at epoch 2;
    the run's last.ckpt (what export and resume read) must hold the final step's weights."""
    from acclimate.cli import main

    recipe = write_recipe(tmp_path, tiny_dataset, "test_resnet")
    run = tmp_path / "run"
    quiet = ["eval.before_after=false", "eval.every_n_epochs=0"]
    args = ["train", str(recipe), f"run_dir={run}", "trainer.max_epochs=3", *quiet]
    assert main([*args, "trainer.checkpoint_every_n_epochs=2"]) == 0
    names = sorted(p.name for p in (run / "checkpoints").glob("*.ckpt"))
    assert names == ["epoch001.ckpt", "last.ckpt"]
    periodic = torch.load(run / "checkpoints" / "epoch001.ckpt", weights_only=True)
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 3 * 4 and periodic["global_step"] == 2 * 4
    assert any(
        not torch.equal(last["state_dict"][k], periodic["state_dict"][k])
        for k in last["state_dict"]
        if last["state_dict"][k].is_floating_point()
    )
    # it resumes as a finished epoch: one more epoch is 4 more steps, not a repeat of the third
    assert main(["train", "--resume", str(run), "trainer.max_epochs=4"]) == 0
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 16
