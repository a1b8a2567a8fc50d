"""Exact resume: a data order and augmentations that are pure functions of (seed, epoch, index),
the random-number state in every checkpoint, and the choice of checkpoint to resume from.

A run killed at any step (SIGKILL included) and resumed from its newest checkpoint ends with the
same weights as a run that was never interrupted:

- the epoch's order is ``randperm`` of a generator seeded with ``seed + epoch`` (the same on every
  rank, each rank taking every ``world``-th item), and a resumed epoch skips the items already
  used (`ResumableSampler`);
- each item is augmented with torch's generator seeded from ``(seed, epoch, index)``
  (`SeededItems`), so an image's crops do not depend on which worker read it, how many workers
  there are, or what was read before it: no per-worker state needs saving;
- the main process's generators (torch, CUDA, NumPy, Python; masks and drop-path draw from them)
  are saved in the checkpoint for every rank and restored just before the first resumed step
  (`RNGState`);
- model, teacher, centre and optimiser are in Lightning's checkpoint; schedules are functions of
  ``global_step``.
"""

from __future__ import annotations

import logging
import os
import random
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, Sampler

log = logging.getLogger(__name__)

_MASK = (1 << 63) - 1


def item_seed(seed: int, epoch: int, index: int) -> int:
    """A well-mixed 63-bit seed for one item of one epoch (splitmix64 of the three numbers)."""
    z = (seed * 0x9E3779B97F4A7C15 + epoch * 0xBF58476D1CE4E5B9 + index) & ((1 << 64) - 1)
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & ((1 << 64) - 1)
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & ((1 << 64) - 1)
    return (z ^ (z >> 31)) & _MASK


def _rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class ResumableSampler(Sampler[tuple[int, int]]):
    """Yields ``(index, item_seed)`` for this rank's share of one epoch, from any position.

    Every rank draws the same permutation (``seed + epoch``) and keeps items ``rank::world``;
    with ``drop_last`` the permutation is cut to a multiple of the world size, else padded by
    repeating its start (as torch's DistributedSampler). Lightning calls ``set_epoch`` at each
    epoch start; `resume` makes the next pass over that epoch skip the items already consumed.

    Args:
        n: items in the dataset.
        seed: the run's seed.
        shuffle: a new random order each epoch (else source order).
        drop_last: drop the tail that does not fill every rank.
    """

    def __init__(self, n: int, seed: int, shuffle: bool = True, drop_last: bool = False) -> None:
        if n < 1:
            raise ValueError("ResumableSampler needs at least one item")
        self.n, self.seed, self.shuffle, self.drop_last = n, seed, shuffle, drop_last
        self.epoch = 0
        self._resume: tuple[int, int] | None = None  # (epoch, items of this rank to skip)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def resume(self, epoch: int, consumed: int) -> None:
        """Skip the first ``consumed`` items of this rank in the next pass over ``epoch``."""
        self._resume = (epoch, consumed)

    def _per_rank(self, world: int) -> int:
        return self.n // world if self.drop_last else -(-self.n // world)

    def __len__(self) -> int:
        return self._per_rank(_rank_world()[1])

    def order(self) -> list[int]:
        """This rank's indices of the current epoch, in order."""
        rank, world = _rank_world()
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            perm = torch.randperm(self.n, generator=g).tolist()
        else:
            perm = list(range(self.n))
        total = self._per_rank(world) * world
        while len(perm) < total:
            perm += perm[: total - len(perm)]
        return perm[:total][rank::world]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        skip = 0
        if self._resume is not None:
            epoch, consumed = self._resume
            self._resume = None
            skip = consumed if epoch == self.epoch else 0
        for i in self.order()[skip:]:
            yield i, item_seed(self.seed, self.epoch, i)


class SeededItems(Dataset):
    """``dataset[(index, seed)]``: item ``index`` produced with torch's CPU generator seeded by
    ``seed``; the caller's generator state is left as it was."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, seed = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.dataset[index]


class ResumableLoader(DataLoader):
    """A DataLoader over `SeededItems` and a `ResumableSampler` that Lightning saves and restores
    (its ``state_dict`` / ``load_state_dict`` protocol for resumable loaders).

    ``position()`` reports ``{"epoch": E, "batches": N}``, the batches of epoch E already trained
    on, read from the trainer's own progress counters: a count kept here would include the
    batches that Lightning and the workers have prefetched but not yet used.
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        seed: int,
        position: Callable[[], dict[str, int]],
        drop_last: bool = False,
        **kwargs: Any,
    ) -> None:
        sampler = ResumableSampler(len(dataset), seed, shuffle=True, drop_last=drop_last)  # type: ignore[arg-type]
        super().__init__(
            SeededItems(dataset),
            batch_size=batch_size,
            sampler=sampler,
            drop_last=drop_last,
            # the loader's own base seed is drawn from this generator, not torch's global one,
            # so creating an iterator consumes none of the main process's random numbers
            generator=torch.Generator().manual_seed(seed),
            **kwargs,
        )
        self._position = position

    def state_dict(self) -> dict[str, int]:
        return dict(self._position())

    def load_state_dict(self, state: dict[str, int]) -> None:
        epoch, batches = int(state["epoch"]), int(state["batches"])
        if batches > 0:
            log.info("resuming epoch %d after its first %d batches", epoch, batches)
        self.sampler.resume(epoch, batches * self.batch_size)  # type: ignore[attr-defined]


def trainer_position(trainer: pl.Trainer) -> dict[str, int]:
    """Epoch and batches of it trained on, for a checkpoint written at a batch or epoch end."""
    progress = trainer.fit_loop.epoch_loop.batch_progress.current
    return {"epoch": int(trainer.current_epoch), "batches": int(progress.processed)}


# --- random-number state -------------------------------------------------------------------------
def _rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, next_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(np.asarray(keys, dtype=np.int64)), pos, has_gauss, gauss],
        "python": [version, list(internal), next_gauss],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, next_gauss = state["python"]
    random.setstate((version, tuple(internal), next_gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class RNGState(pl.Callback):
    """Save every rank's generators in the checkpoint; restore them before the first step after
    a resume, so masks, drop-path and other draws continue as if never interrupted."""

    KEY = "acclimate_rng"

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self._pending: list[dict[str, Any]] | None = None

    def on_train_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        """A fresh run: what is drawn during training (masks, drop-path) differs per rank
        (``seed + rank``, as MAE and DINOv2 do); initialisation before this was common."""
        if self._pending is None:
            rank = trainer.global_rank
            torch.manual_seed(self.seed + rank)
            np.random.seed((self.seed + rank) % 2**32)
            random.seed(self.seed + rank)

    def on_save_checkpoint(
        self, trainer: pl.Trainer, module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        state = _rng_state()
        if trainer.world_size > 1 and dist.is_available() and dist.is_initialized():
            states: list[Any] = [None] * trainer.world_size
            dist.all_gather_object(states, state)  # every rank dumps the checkpoint
        else:
            states = [state]
        checkpoint[self.KEY] = states

    def on_load_checkpoint(
        self, trainer: pl.Trainer, module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        self._pending = checkpoint.get(self.KEY)
        if self._pending is None:
            log.warning("the checkpoint holds no random-number state: the resumed run is not exact")

    def on_train_batch_start(
        self, trainer: pl.Trainer, module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._pending is None:
            return
        states, self._pending = self._pending, None
        if len(states) != trainer.world_size:
            log.warning(
                "the checkpoint was written by %d process(es), this run has %d: random numbers "
                "continue from a fresh state",
                len(states),
                trainer.world_size,
            )
            return
        _set_rng_state(states[trainer.global_rank])


# --- which checkpoint ----------------------------------------------------------------------------
def remove_orphans(checkpoint_dir: Path) -> list[Path]:
    """Delete temporary checkpoint files (``.NAME.tmp-PID``) whose writer is no longer running."""
    removed = []
    for tmp in checkpoint_dir.glob(".*.tmp-*"):
        pid = tmp.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and _alive(int(pid)):
            continue
        try:
            tmp.unlink()
            removed.append(tmp)
        except OSError as exc:
            log.warning("could not remove the orphan temporary file %s: %s", tmp, exc)
    if removed:
        log.info("removed %d orphan temporary checkpoint file(s)", len(removed))
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


EPOCH_CHECKPOINT = re.compile(r"epoch\d+(-v\d+)?\.ckpt")  # trainer_settings' periodic ones


def remove_old_epoch_checkpoints(checkpoint_dir: Path, keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` periodic epoch checkpoints (``epochNNN.ckpt``) of a
    run; ``last.ckpt`` and step checkpoints are left alone. Called once a new one is in place."""
    epochs = [p for p in _newest_first(checkpoint_dir) if EPOCH_CHECKPOINT.fullmatch(p.name)]
    removed = []
    for old in epochs[keep:]:
        try:
            old.unlink()
            removed.append(old)
        except FileNotFoundError:
            pass
        except OSError as exc:  # a full or read-only disk says so elsewhere; training goes on
            log.warning("could not remove the old checkpoint %s: %s", old, exc)
    return removed


def checkpoints_newest_first(run_dir: str | Path) -> list[Path]:
    """The complete checkpoints of a run (``checkpoints/*.ckpt``), newest first (``last.ckpt``
    first among equals). Checkpoints are written to a temporary name and renamed, so every
    ``.ckpt`` file here is complete."""
    return _newest_first(Path(run_dir) / "checkpoints")


def _newest_first(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    files = [p for p in folder.glob("*.ckpt") if p.is_file()]
    return sorted(files, key=lambda p: (p.stat().st_mtime_ns, p.name == "last.ckpt"), reverse=True)


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint of a run folder, or None."""
    files = checkpoints_newest_first(run_dir)
    return files[0] if files else None
