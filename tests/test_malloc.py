"""The training loader's workers keep freed memory for reuse (glibc): what they run, and that
it stops a freed block from being faulted in again."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from acclimate.data import datamodule
from acclimate.data.transforms import MultiCropTransform

glibc = pytest.mark.skipif(
    sys.platform != "linux" or platform.libc_ver()[0] != "glibc", reason="glibc only"
)

CYCLES = """
import resource, sys, torch
from acclimate.data.malloc import keep_freed_memory
if sys.argv[1] == "tuned":
    assert keep_freed_memory()
def cycle():  # 64 live blocks of 1 MiB (ops' temporaries), then all freed
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    blocks = [torch.ones(1 << 18) for _ in range(64)]
    del blocks
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0
print(*[cycle() for _ in range(6)])
"""


def _faults(setting: str) -> list[int]:
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    out = subprocess.run(
        [sys.executable, "-c", CYCLES, setting], capture_output=True, text=True, env=env, check=True
    )
    return [int(n) for n in out.stdout.split()]


@glibc
def test_freed_blocks_are_reused_not_faulted_in_again() -> None:
    pages = (64 << 20) // 4096
    default, tuned = _faults("default"), _faults("tuned")
    assert default[0] > pages // 2 and tuned[0] > pages // 2  # the first touch faults
    # glibc's defaults: 64 MiB free at the top of the heap is past its trim threshold (twice
    # the largest block freed), handed back to the kernel and faulted in again every time.
    # (With a live set of 20 MiB the defaults' cycles varied from run to run: holes left in
    # the heap by the imports could hold it. 64 MiB does not fit in them.)
    assert min(default[2:]) > pages // 2
    assert max(tuned[2:]) < pages // 50


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
