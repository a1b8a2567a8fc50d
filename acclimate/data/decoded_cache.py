"""Decode once, not every epoch (``data.cache``): every training image is decoded into memory
before training and each epoch's items are read from there; the augmentation still runs per
item, per epoch.

The cache holds what ``bad_files.decode`` gives for each item, a (C, H, W) tensor or a
``BadItem``, so `ImageDataset` treats a bad item exactly as without it: reported when met, the
same next item standing in. It is filled in the main process by a DataLoader over the plain
decode path, before the training loader's workers start: they are forked and share it
copy-on-write. Images with the shape and dtype of a random sample of them sit in one
preallocated (N, C, H, W) tensor, with no Python object per item for reference counting to copy
into every worker; images of other shapes are kept one tensor each.
"""

from __future__ import annotations

import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from acclimate.data.bad_files import BadItem, decode
from acclimate.data.sources.base import ImageSource

log = logging.getLogger(__name__)

CACHE_MODES = ("auto", "memory", "none")
DEFAULT_FRACTION = 0.25  # of the available memory, for ``auto`` without data.cache_max_gb
DEFAULT_CAP = 32 * 10**9  # bytes: at most this by default, however much memory there is
SAMPLE = 64  # images decoded to estimate the size and the layout
CHUNK = 32  # images decoded per fill task

Layout = tuple[tuple[int, ...], torch.dtype]  # ((C, H, W), dtype)
Meta = Layout | BadItem  # what crosses from a fill worker for each item, beside its bytes


def check_cache_mode(mode: str) -> None:
    """ValueError unless ``mode`` is one of `CACHE_MODES` (recipes are checked earlier, in
    ``rules.py``, with a hint)."""
    if mode not in CACHE_MODES:
        raise ValueError(f"cache must be one of {', '.join(CACHE_MODES)}, got {mode!r}")


def gigabytes(nbytes: float) -> str:
    return f"{nbytes / 1e9:.2f} GB"


@dataclass(frozen=True)
class Survey:
    """What a source's decoded images take: ``nbytes`` for all of them (an estimate), ``basis``
    (how it was found, for the log) and ``layout`` ((C, H, W), dtype) when every usable sampled
    image has that shape and dtype, else None."""

    nbytes: int
    basis: str
    layout: Layout | None


def survey(source: ImageSource, skip_constant: bool = False, sample: int = SAMPLE) -> Survey:
    """Decode a random sample of up to ``sample`` items of ``source`` for their layout; the
    decoded size of all N items is the source's own count when it has one (``decoded_nbytes``,
    from array headers), else the sample's mean size times N."""
    n = len(source)
    picked = np.random.default_rng(0).choice(n, size=min(sample, n), replace=False)
    images = [decode(source, int(i), skip_constant) for i in picked]
    images = [t for t in images if isinstance(t, torch.Tensor)]
    kinds = {(tuple(t.shape), t.dtype) for t in images}
    layout = next(iter(kinds)) if len(kinds) == 1 else None
    exact = source.decoded_nbytes()
    if exact is not None:
        return Survey(exact, "from the array headers", layout)
    mean = sum(t.nbytes for t in images) / max(len(images), 1)
    return Survey(round(mean * n), f"from {len(images)} of {len(picked)} sampled images", layout)


def _read_int(path: str | Path) -> int | None:
    try:
        return int(Path(path).read_text().split()[0])
    except (OSError, ValueError, IndexError):  # absent, or "max" (no limit)
        return None


CGROUP_ROOT = Path("/sys/fs/cgroup")


def _cgroup_files(proc_cgroup: str = "/proc/self/cgroup") -> list[tuple[Path, Path]]:
    """(limit, usage) files of this process's memory cgroup and of every cgroup above it: a
    batch scheduler (SLURM, systemd) puts a job's limit below the root, where a container's is at
    it. cgroup v2 (``0::/path``) and v1 (``N:memory:/path``, also ``...,memory,...``)."""
    try:
        lines = Path(proc_cgroup).read_text().splitlines()
    except OSError:
        lines = ["0::/", "0:memory:/"]  # unknown: the roots of v2 and v1
    files = []
    for line in lines:
        _, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if controllers == "":
            base, names = CGROUP_ROOT, ("memory.max", "memory.current")
        elif "memory" in controllers.split(","):
            base = CGROUP_ROOT / "memory"
            names = ("memory.limit_in_bytes", "memory.usage_in_bytes")
        else:
            continue
        parts = [p for p in path.strip().split("/") if p]
        for depth in range(len(parts), -1, -1):  # this cgroup, then each parent up to the root
            folder = base.joinpath(*parts[:depth])
            files.append((folder / names[0], folder / names[1]))
    return files


def available_memory() -> int | None:
    """Bytes of memory that this process may still take: the kernel's MemAvailable, lowered to
    the room left under the container's cgroup limit; None when neither can be read."""
    found = []
    try:
        meminfo = Path("/proc/meminfo").read_text()
        if m := re.search(r"^MemAvailable:\s+(\d+) kB", meminfo, re.MULTILINE):
            found.append(int(m.group(1)) * 1024)
    except OSError:
        pass
    for limit_file, usage_file in _cgroup_files():
        limit, usage = _read_int(limit_file), _read_int(usage_file)
        if limit is not None and usage is not None and limit < 1 << 60:  # v1: 2^63 = none
            found.append(max(limit - usage, 0))
    return min(found) if found else None


def _limit(max_gb: float | None) -> tuple[int | None, str]:
    """The size limit of ``auto`` in bytes (None when unknown) and where it comes from."""
    if max_gb is not None:
        return round(max_gb * 1e9), f"data.cache_max_gb: {max_gb:g}"
    free = available_memory()
    if free is None:
        return None, "the available memory is unknown: set data.cache_max_gb"
    limit = min(round(free * DEFAULT_FRACTION), DEFAULT_CAP)
    return limit, (
        f"{DEFAULT_FRACTION:.0%} of the {gigabytes(free)} available, "
        f"at most {gigabytes(DEFAULT_CAP)}"
    )


def use_cache(
    mode: str, found: Survey, max_gb: float | None = None, processes: int = 1
) -> tuple[bool, str]:
    """Whether ``mode`` (``auto`` or ``memory``) caches a source surveyed as ``found``, and why
    (for the log). ``auto`` caches when the decoded size fits under the limit, divided among the
    ``processes`` on this machine (every training process holds its own copy)."""
    size = f"about {gigabytes(found.nbytes)} decoded ({found.basis})"
    if mode == "memory":
        return True, f"data.cache: memory, {size}"
    limit, why = _limit(max_gb)
    if limit is None:
        return False, f"{size}; {why}"
    if processes > 1:
        limit //= processes
        why += f"; shared by {processes} processes on this machine"
    fits = found.nbytes <= limit
    return fits, f"{size} {'<=' if fits else '>'} the limit {gigabytes(limit)} ({why})"


def decoded_cache(
    source: ImageSource,
    mode: str,
    skip_constant: bool = False,
    num_workers: int = 0,
    max_gb: float | None = None,
    processes: int = 1,
    progress: bool = True,
) -> DecodedCache | None:
    """The filled cache of ``source`` for ``data.cache: mode``, or None to stream from the
    source (``none``, or ``auto`` when it does not fit); logs the choice. ``processes``: the
    training processes on this machine, each filling its own copy."""
    check_cache_mode(mode)
    if mode == "none":
        return None
    found = survey(source, skip_constant)
    cached, why = use_cache(mode, found, max_gb, processes)
    log.info("decoded-image cache %s: %s", "on" if cached else "off, streaming", why)
    if not cached:
        return None
    free = available_memory()
    if free is not None and found.nbytes * processes > free:
        log.warning(
            "the decoded images (about %s in each of %d process(es)) may not fit in the %s "
            "of memory available; set data.cache: none if the run runs out of memory",
            gigabytes(found.nbytes),
            processes,
            gigabytes(free),
        )
    return DecodedCache.fill(source, found.layout, skip_constant, num_workers, progress)


def _pack(items: list[torch.Tensor | BadItem]) -> tuple[torch.Tensor, list[Meta]]:
    """A chunk of decoded items as one uint8 tensor of the images' bytes back to back (one
    shared-memory block to cross from a worker, not one per image) and per item its layout or
    its BadItem."""
    images = [t for t in items if isinstance(t, torch.Tensor)]
    parts = [t.contiguous().view(-1).view(torch.uint8) for t in images]
    flat = torch.cat(parts) if parts else torch.empty(0, dtype=torch.uint8)
    return flat, [t if isinstance(t, BadItem) else (tuple(t.shape), t.dtype) for t in items]


class _Chunks(Dataset):
    """Item k: the packed ``decode`` of items [k * size, (k + 1) * size) of ``source``."""

    def __init__(self, source: ImageSource, skip_constant: bool, size: int) -> None:
        self.source, self.skip_constant, self.size = source, skip_constant, size

    def __len__(self) -> int:
        return -(-len(self.source) // self.size)

    def __getitem__(self, k: int) -> tuple[torch.Tensor, list[Meta]]:
        items = range(k * self.size, min((k + 1) * self.size, len(self.source)))
        return _pack([decode(self.source, i, self.skip_constant) for i in items])


def _as_is(chunk: Any) -> Any:
    return chunk


class DecodedCache:
    """Item i of a source as ``bad_files.decode`` gives it: ``bad[i]`` (a BadItem), else row i
    of ``images`` (N, C, H, W) when the item has their layout, else ``extra[i]`` (C, H, W).

    Fill it with ``fill`` in the main process before DataLoader workers fork. Rows of items kept
    elsewhere are never written (untouched pages take no memory).
    """

    def __init__(self, n: int, layout: Layout | None, skip_constant: bool = False) -> None:
        self.n = n
        self.skip_constant = skip_constant
        self.images = None if layout is None else torch.empty((n, *layout[0]), dtype=layout[1])
        self.extra: dict[int, torch.Tensor] = {}
        self.bad: dict[int, BadItem] = {}

    def __len__(self) -> int:
        return self.n

    @property
    def nbytes(self) -> int:
        """Bytes of the decoded images held (the rows of ``images`` written, and ``extra``)."""
        kept = sum(t.nbytes for t in self.extra.values())
        if self.images is None:
            return kept
        rows = self.n - len(self.extra) - len(self.bad)
        return rows * (self.images.nbytes // self.n) + kept

    def get(self, i: int) -> torch.Tensor | BadItem:
        """Item ``i``: a copy of its (C, H, W) tensor (a transform may write into it), or its
        BadItem."""
        if i in self.bad:
            return self.bad[i]
        image = self.extra.get(i)
        return (self.images[i] if image is None else image).clone()  # type: ignore[index]

    def _slot(self, i: int, layout: Layout) -> torch.Tensor:
        """Where item ``i`` goes: its row of ``images`` when it has their layout, else a new
        tensor in ``extra``."""
        shape, dtype = layout
        if (
            self.images is not None
            and self.images.shape[1:] == shape
            and self.images.dtype == dtype
        ):
            return self.images[i]
        self.extra[i] = torch.empty(shape, dtype=dtype)
        return self.extra[i]

    def put_chunk(self, start: int, flat: torch.Tensor, metas: list[Meta]) -> None:
        """Store items ``start, start + 1, ...`` from a packed chunk (``_pack``)."""
        offset = 0
        for i, meta in enumerate(metas, start):
            if isinstance(meta, BadItem):
                self.bad[i] = meta
                continue
            slot = self._slot(i, meta)
            slot.view(-1).view(torch.uint8).copy_(flat[offset : offset + slot.nbytes])
            offset += slot.nbytes

    @classmethod
    def fill(
        cls,
        source: ImageSource,
        layout: Layout | None,
        skip_constant: bool = False,
        num_workers: int = 0,
        progress: bool = True,
        chunk: int = CHUNK,
    ) -> DecodedCache:
        """Decode every item of ``source`` into a new cache, with up to
        ``num_workers`` DataLoader workers (at least 4 chunks of ``chunk`` items each, so a
        tiny source decodes in this process) and a progress bar."""
        n = len(source)
        cache = cls(n, layout, skip_constant)
        chunks = _Chunks(source, skip_constant, chunk)
        workers = min(num_workers, os.cpu_count() or 1, len(chunks) // 4)
        loader = DataLoader(chunks, batch_size=None, num_workers=workers, collate_fn=_as_is)
        start = time.perf_counter()
        from tqdm.auto import tqdm

        with tqdm(
            total=n, desc="decoding into memory", unit="img", leave=False, disable=not progress
        ) as bar:
            for k, (flat, metas) in enumerate(loader):
                cache.put_chunk(k * chunk, flat, metas)
                bar.update(len(metas))
        log.info(
            "decoded %d images of %s into memory in %.1f s: %s; %d unusable (reported when met)",
            n,
            source.name,
            time.perf_counter() - start,
            cache.describe(),
            len(cache.bad),
        )
        return cache

    def describe(self) -> str:
        """What the cache holds, for the log: its size and how it is stored."""
        parts = [] if self.images is None else [f"one {tuple(self.images.shape)} tensor"]
        parts += [f"{len(self.extra)} separate tensors"] if self.extra or not parts else []
        return f"{gigabytes(self.nbytes)} in {' and '.join(parts)}"
