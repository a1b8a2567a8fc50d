"""Freed memory kept for reuse (glibc): in the training and evaluation process (no mmap, no
trim) and in the training loader's workers; what runs it, and that it stops a freed block from
being faulted in again."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from acclimate import callbacks, cli, training
from acclimate.callbacks import ReuseFreedMemory
from acclimate.config import load_recipe
from acclimate.data import datamodule
from acclimate.data.transforms import MultiCropTransform
from acclimate.errors import ConfigError
from acclimate.malloc import ENV, reuse_freed_memory
from acclimate.trainer_settings import TrainerSettings

ROOT = Path(__file__).resolve().parents[1]


def _glibc(version: tuple[int, int]) -> bool:
    libc, found = platform.libc_ver()
    numbers = tuple(int(n) for n in found.split(".")[:2] if n.isdigit())
    return sys.platform == "linux" and libc == "glibc" and numbers >= version


glibc = pytest.mark.skipif(not _glibc((2, 33)), reason="glibc 2.33 or newer (mallinfo2)")

CYCLES = """
import ctypes, resource, sys, torch
from acclimate.malloc import keep_freed_memory, reuse_freed_memory
class Info(ctypes.Structure):  # glibc's struct mallinfo2
    names = "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost"
    _fields_ = [(n, ctypes.c_size_t) for n in names.split()]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Info
if sys.argv[1] == "tuned":
    assert keep_freed_memory()
if sys.argv[1] == "reuse":
    assert reuse_freed_memory()
big = int(sys.argv[2])  # MiB
before = libc.mallinfo2().hblkhd  # bytes in blocks that have their own mapping
block = torch.empty(big << 20, dtype=torch.uint8)
mapped = libc.mallinfo2().hblkhd - before
del block
def cycle():  # live blocks of 1 MiB (ops' temporaries) or one big block, then all freed
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    blocks = [torch.ones(1 << 18) for _ in range(64)] if big < 32 else [torch.ones(big << 18)]
    del blocks
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0
print(mapped, *[cycle() for _ in range(6 if big < 32 else 12)])
"""


def _run(setting: str, big_mib: int = 24) -> tuple[int, list[int]]:
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", ENV)}
    cmd = [sys.executable, "-c", CYCLES, setting, str(big_mib)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
    mapped, *faults = (int(n) for n in out.stdout.split())
    return mapped, faults


@glibc
def test_freed_blocks_stay_in_the_heap_and_are_reused() -> None:
    mapped, _ = _run("default")
    # glibc's defaults: a fresh 24 MiB block gets its own mapping, unmapped when freed (what
    # happens to smaller blocks later depends on the process's history: glibc raises its mmap
    # threshold to the size of a mapped block freed, so it is not asserted here)
    assert mapped >= 24 << 20
    mapped, faults = _run("tuned")
    assert mapped == 0  # in the heap, kept there when freed
    pages = (64 << 20) // 4096
    assert faults[0] > pages // 2  # the first touch faults
    assert max(faults[2:]) < pages // 50  # then the same memory serves every cycle


@glibc
def test_the_training_process_reuses_blocks_above_the_largest_mmap_threshold() -> None:
    # 64 MiB: above glibc's largest mmap threshold (32 MiB), where a CNN's activations are; with
    # the defaults each such block is mapped, unmapped when freed and faulted in again
    pages = (64 << 20) // 4096
    mapped, faults = _run("default", 64)
    assert mapped >= 64 << 20
    assert min(faults[2:]) > pages // 2  # every cycle faults the block in again
    mapped, faults = _run("reuse", 64)
    assert mapped == 0  # from the heap, kept there when freed
    # torch asks for 64-byte alignment, so a freed block is a little short for the next one
    # until freed neighbours merge: the heap grows for a few cycles, then serves them all
    assert max(faults[-4:]) < pages // 50


@glibc
def test_acclimate_malloc_system_keeps_glibcs_defaults() -> None:
    out = subprocess.run(
        [sys.executable, "-c", "from acclimate.malloc import reuse_freed_memory as r; print(r())"],
        capture_output=True,
        text=True,
        env={**os.environ, ENV: "system"},
        check=True,
    )
    assert out.stdout.strip() == "False"


def test_an_unknown_acclimate_malloc_value_is_a_clear_error(monkeypatch) -> None:
    monkeypatch.setattr("acclimate.malloc._reusing", False)
    monkeypatch.setenv(ENV, "sytem")
    with pytest.raises(ConfigError, match="ACCLIMATE_MALLOC='sytem': expected 'reuse'"):
        reuse_freed_memory()


class _Called(Exception):
    pass


def _stop() -> bool:
    raise _Called


def test_training_and_every_command_set_it_first(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setattr(training, "reuse_freed_memory", _stop)
    with pytest.raises(_Called):  # first thing: before the loader (and its workers) exist
        training.train(load_recipe(ROOT / "recipes" / "demo.yaml"), tmp_path / "run")
    monkeypatch.setattr(cli, "reuse_freed_memory", _stop)
    with pytest.raises(_Called):
        cli.main(["stats", str(tmp_path)])


def test_every_rank_sets_it_in_the_trainers_setup(monkeypatch, tmp_path: Path) -> None:
    # ranks started by ddp_spawn are fresh interpreters that never run training.train
    trainer = TrainerSettings(max_epochs=1, progress_bar=False).build(tmp_path, [])
    (hook,) = [c for c in trainer.callbacks if isinstance(c, ReuseFreedMemory)]
    monkeypatch.setattr(callbacks, "reuse_freed_memory", _stop)
    with pytest.raises(_Called):
        hook.setup(trainer, None, "fit")  # type: ignore[arg-type]


def test_the_training_loaders_workers_run_it(
    tiny_dataset: Path, tmp_path: Path, monkeypatch
) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()

    def mark(worker_id: int) -> bool:
        (marks / f"{worker_id}-{os.getpid()}").touch()
        return True

    monkeypatch.setattr(datamodule, "keep_freed_memory", mark)
    dm = datamodule.SSLDataModule(
        str(tiny_dataset), batch_size=4, num_workers=1, mean=[0.5] * 3, std=[0.2] * 3
    )
    dm.transform = MultiCropTransform(16, 8, 2, mean=[0.5] * 3, std=[0.2] * 3, device="cpu")
    loader = dm.train_dataloader()
    next(iter(loader))
    (made,) = list(marks.iterdir())
    assert made.name.startswith("0-") and made.name != f"0-{os.getpid()}"  # in the worker
    dm.num_workers = 0
    assert dm.train_dataloader().worker_init_fn is None  # no workers: the process is left alone
