"""glibc's malloc told to keep freed blocks for reuse, in the training loader's workers.

With glibc's defaults a block above its mmap threshold (128 KiB at first) gets its own ``mmap``
and goes back to the kernel when freed, and free memory at the top of the heap is handed back
past the trim threshold: the next tensor of that size is faulted in again, page by page. The
augmentation's temporaries at 224 px are planes of 200 kB, one or more per op and view, so the
batch stage of the multi-crop transform spent about a quarter of its time in page faults
(bench/README.md, "Augmentation per core": 8.7 against 12.0 ms per image at 224/96 px). The
loader's worker processes therefore raise both thresholds when they start (mmap 32 MiB, glibc's
maximum on 64-bit; trim 256 MiB); the training process keeps glibc's defaults (measured there,
it did not pay: bench/bench_malloc.py). Blocks above 32 MiB (whole collated batches) still get
their own mapping, so a worker holds at most its peak of smaller live blocks.
"""

from __future__ import annotations

import ctypes
import platform
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h
MMAP_THRESHOLD = 32 << 20
TRIM_THRESHOLD = 256 << 20


def keep_freed_memory(worker_id: int = 0) -> bool:
    """Raise glibc's mmap and trim thresholds in this process (a DataLoader ``worker_init_fn``);
    False where the C library is not glibc (nothing is changed there)."""
    if sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    mmap_ok = libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    trim_ok = libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    return bool(mmap_ok and trim_ok)
