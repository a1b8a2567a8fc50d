"""Checks made before any work starts, so that a run or a command fails in its first second with
one line naming the path and the fix, not after an epoch with a traceback: the run folder and the
output folders are writable and have room, and a user's checkpoint is a readable acclimate
checkpoint that loads without running pickled code (``weights_only=True``)."""

from __future__ import annotations

import os
import pickle
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from acclimate.errors import AcclimateError

# Room kept free beyond the checkpoints themselves (logs, TensorBoard events, metrics, the OS).
SPACE_MARGIN_BYTES = 64 * 2**20


class PreflightError(AcclimateError):
    """A run folder or output path that cannot take what is about to be written."""


class CheckpointError(AcclimateError):
    """A checkpoint file that is unreadable, refused, or not one of acclimate's."""


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _reason(e: OSError) -> str:
    return e.strerror or type(e).__name__


def check_writable_dir(
    path: str | Path, what: str = "output folder", fix: str = "choose another output folder"
) -> Path:
    """Create ``path`` (and its parents) if needed and prove that a file can be written in it:
    a temporary file is really created and removed, since permissions, read-only mounts and
    quotas are only known by trying. ``what`` names the folder and ``fix`` says what to do, in
    the one-line :class:`PreflightError`."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise PreflightError(f"{path}: the {what} is a file, not a folder; remove it or {fix}")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PreflightError(f"{path}: cannot create the {what} ({_reason(e)}); {fix}") from None
    try:
        fd, probe = tempfile.mkstemp(prefix=".acclimate-write-test-", dir=path)
        try:
            os.write(fd, b"0")
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as e:
        raise PreflightError(
            f"{path}: the {what} is not writable ({_reason(e)}); fix its permissions or {fix}"
        ) from None
    return path


def check_free_space(path: str | Path, needed_bytes: int, what: str) -> None:
    """Fail when the disk holding ``path`` has less than ``needed_bytes`` + a margin free."""
    free = shutil.disk_usage(path).free
    if free < needed_bytes + SPACE_MARGIN_BYTES:
        raise PreflightError(
            f"{path}: only {_size(free)} free on its disk, {what} needs about "
            f"{_size(needed_bytes + SPACE_MARGIN_BYTES)}; free some space or choose a folder "
            "on another disk"
        )


def check_run_dir(run_dir: Path, checkpoint_bytes: int) -> None:
    """Make sure a run can write everything it will write, before training starts.

    Creates ``run_dir`` and its ``checkpoints/`` and ``tensorboard/`` folders, writes and removes
    a file in each, and checks that the disk has room for two checkpoints (the one being written
    atomically beside the previous one) of ``checkpoint_bytes`` each (see
    :func:`estimate_checkpoint_bytes`), plus a margin. Raises :class:`PreflightError` naming the
    path and the fix.
    """
    run_dir = Path(run_dir)
    fix = "choose another run_dir"
    check_writable_dir(run_dir, "run folder", fix)
    for sub in ("checkpoints", "tensorboard"):
        check_writable_dir(run_dir / sub, f"run's {sub} folder", fix)
    check_free_space(run_dir, 2 * int(checkpoint_bytes), "the run (two checkpoints)")


def estimate_checkpoint_bytes(module: nn.Module) -> int:
    """Bytes of a training checkpoint of ``module``: every parameter and buffer once, and each
    trainable parameter twice more for the optimiser's state (AdamW's two moments)."""
    total = 0
    for p in module.parameters():
        total += p.numel() * p.element_size() * (3 if p.requires_grad else 1)
    for b in module.buffers():
        total += b.numel() * b.element_size()
    return total


_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")


def load_checkpoint_file(path: str | Path) -> dict[str, Any]:
    """Load a user's acclimate (Lightning) checkpoint on the CPU with ``weights_only=True``.

    Raises :class:`CheckpointError`, one line naming the file, when it is missing, truncated or
    corrupt, holds pickled Python objects (refused: loading them would run their code), or is a
    valid torch file that is not an acclimate checkpoint (no ``state_dict`` and ``acclimate``
    entries).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    with open(path, "rb") as f:  # an unreadable file (permissions, I/O) is an OSError naming it
        f.read(1)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = _GLOBAL.search(str(e))
        if found is None:  # bytes that are not a torch file at all (text, another format)
            raise CheckpointError(
                f"{path}: not a torch checkpoint (corrupt, or another kind of file); use a "
                "checkpoint written by `acclimate train` (checkpoints/*.ckpt of a run)"
            ) from None
        what = f" ({found.group(1)})"
        raise CheckpointError(
            f"{path}: contains pickled Python code{what} and was refused (acclimate loads "
            "checkpoints with weights_only=True); use a checkpoint written by `acclimate train`, "
            "or re-save just the tensors"
        ) from None
    except Exception as e:  # torch raises RuntimeError, EOFError, KeyError, OSError on bad bytes
        detail = str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"{path}: truncated or corrupt, not a readable torch checkpoint ({detail}); "
            "use another checkpoint of the run (checkpoints/epochNNN.ckpt)"
        ) from None
    if not isinstance(obj, dict) or not {"state_dict", "acclimate"} <= set(obj):
        keys = ", ".join(map(str, list(obj)[:5])) if isinstance(obj, dict) else type(obj).__name__
        raise CheckpointError(
            f"{path}: not an acclimate checkpoint (no 'state_dict' and 'acclimate' entries; it "
            f"holds {keys or 'nothing'}); pass a .ckpt from a run's checkpoints/ folder, or a "
            "weights file with --weights"
        )
    return obj
