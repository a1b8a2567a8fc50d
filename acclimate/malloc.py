"""glibc's malloc told to keep freed memory for reuse: in the training and evaluation process,
and in the training loader's workers.

With glibc's defaults a block above its mmap threshold (128 KiB at first, at most 32 MiB on
64-bit) gets its own ``mmap`` and goes back to the kernel when freed, and free memory at the top
of the heap is handed back past the trim threshold: the next tensor of that size is faulted in
again, 4 KiB page by page. A CNN's activations are such blocks. The demo's distillation epoch
(26 steps, batch 64, a 128 px teacher) took 8.6 million minor page faults and 33 s of system
time beside 57 s of user time; with mmap off and no trimming, 0.8 million and 9 s, and each step
went from 1.5 to 0.7 s (bench/README.md, "glibc malloc").

- :func:`reuse_freed_memory` (the process that trains or extracts features, before its loader
  forks workers, which inherit it): no ``mmap`` for any block and no trimming, so the heap grows
  to the run's peak and serves every later step from memory already faulted in, as PyTorch's
  CUDA caching allocator does on a GPU. ``ACCLIMATE_MALLOC=system`` keeps glibc's defaults.
- :func:`keep_freed_memory` (a DataLoader ``worker_init_fn``): the mmap threshold at its 32 MiB
  maximum and trimming past 256 MiB, for the augmentation's temporaries (planes of 200 kB at
  224 px: a quarter of the batch stage's time went to page faults, "Augmentation per core").
  Workers forked from a process that runs :func:`reuse_freed_memory` keep its no-mmap setting;
  this then only brings their trim threshold down to 256 MiB.
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform
import sys

from acclimate.errors import ConfigError

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_MMAP_MAX = -1, -3, -4  # glibc's malloc.h
MMAP_THRESHOLD = 32 << 20
TRIM_THRESHOLD = 256 << 20
NO_TRIM = 2**31 - 1  # mallopt takes an int: 2 GiB - 1 of free memory at the heap's top
ENV = "ACCLIMATE_MALLOC"

_reusing = False


def _libc() -> ctypes.CDLL | None:
    if sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def keep_freed_memory(worker_id: int = 0) -> bool:
    """Raise glibc's mmap and trim thresholds in this process (a DataLoader ``worker_init_fn``);
    False where the C library is not glibc (nothing is changed there)."""
    libc = _libc()
    if libc is None:
        return False
    mmap_ok = libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    trim_ok = libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    return bool(mmap_ok and trim_ok)


def reuse_freed_memory() -> bool:
    """No ``mmap`` and no trimming for glibc's malloc in this process, so freed tensors' memory
    is reused instead of faulted in again; once per process (later calls return at once).

    The process's resident memory then stays at its peak (freed memory is kept for reuse, not
    returned to the system). False, with nothing changed, where the C library is not glibc or
    ``ACCLIMATE_MALLOC=system`` is set; `ConfigError` for any other value than ``reuse``.
    """
    global _reusing
    if _reusing:
        return True
    setting = os.environ.get(ENV, "").strip().lower()
    if setting not in ("", "reuse", "system"):
        raise ConfigError(f"{ENV}={os.environ[ENV]!r}: expected 'reuse' (the default) or 'system'")
    if setting == "system":
        return False
    libc = _libc()
    if libc is None:
        return False
    if not (libc.mallopt(M_MMAP_MAX, 0) and libc.mallopt(M_TRIM_THRESHOLD, NO_TRIM)):
        return False
    _reusing = True
    log.info("malloc: freed memory kept for reuse (glibc: no mmap, no trim; %s=system: off)", ENV)
    return True
