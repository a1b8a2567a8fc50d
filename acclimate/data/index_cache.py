"""Cache of large file indexes, so that a source of a million images is listed once.

The index of a folder or CSV source (packed paths, labels, classes) is saved as one ``.npz`` in
``$ACCLIMATE_CACHE_DIR/index`` (default ``~/.cache/acclimate/index``) when it holds at least
``MIN_ITEMS`` images. It is reused while every folder scanned (and the CSV file) keeps its
``mtime``: adding, removing or renaming a file changes its folder's mtime, which rebuilds the
index. Set ``ACCLIMATE_CACHE_DIR=off`` to disable it.

The cache knows nothing of sources: it stores and returns a ``FileIndex`` (plain arrays), and
the code that builds one notes what it read in the ``Watched`` it is handed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from acclimate.data.paths import PathArray

log = logging.getLogger(__name__)

MIN_ITEMS = 20_000  # smaller sources list in well under a second: not worth a cache file
FORMAT = 1


@dataclass(frozen=True)
class FileIndex:
    """What a folder or CSV source lists: one path and label (int64, -1 for none) per image,
    the class names and the source's name."""

    name: str
    paths: PathArray
    labels: np.ndarray
    classes: list[str]

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class Watched:
    """The folders and files whose mtimes an index being built depends on."""

    paths: list[str] = field(default_factory=list)

    def add(self, path: str | os.PathLike[str]) -> None:
        self.paths.append(os.fspath(path))


def cache_dir(kind: str) -> Path | None:
    """``$ACCLIMATE_CACHE_DIR/KIND`` (default ``~/.cache/acclimate/KIND``); None when off."""
    root = os.environ.get("ACCLIMATE_CACHE_DIR")
    if root is not None and root.strip().lower() in ("off", "0", "none", ""):
        return None
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "acclimate"
    return base / kind


def key_file(kind: str, key: dict[str, Any], suffix: str) -> Path | None:
    """``cache_dir(kind)/HASH{suffix}``, HASH naming ``key``; None when the cache is off."""
    folder = cache_dir(kind)
    if folder is None:
        return None
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    return folder / f"{digest}{suffix}"


def _mtimes(paths: list[str]) -> np.ndarray:
    return np.array([os.stat(p).st_mtime_ns for p in paths], dtype=np.int64)


def _load(file: Path, key: dict[str, Any]) -> FileIndex | None:
    try:
        with np.load(file, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            if meta["format"] != FORMAT or meta["key"] != key:
                return None
            watched = meta["watched"]
            if not np.array_equal(_mtimes(watched), z["mtimes"]):
                log.info("index cache %s is stale: rebuilding", file)
                return None
            paths = PathArray.from_buffer(z["buffer"].tobytes(), z["offsets"])
            return FileIndex(meta["name"], paths, z["labels"], meta["classes"])
    except (OSError, ValueError, KeyError) as exc:  # missing, corrupt or stale: rebuild
        log.debug("index cache %s not used: %s", file, exc)
        return None


def _save(file: Path, key: dict[str, Any], index: FileIndex, watched: list[str]) -> None:
    meta = {
        "format": FORMAT,
        "key": key,
        "name": index.name,
        "classes": index.classes,
        "watched": watched,
    }
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        tmp = file.with_name(f".{file.name}.{os.getpid()}.tmp.npz")
        np.savez(
            tmp,
            meta=np.array(json.dumps(meta)),
            buffer=np.frombuffer(index.paths.buffer, dtype=np.uint8),
            offsets=index.paths.offsets,
            labels=index.labels,
            mtimes=_mtimes(watched),
        )
        os.replace(tmp, file)
        log.info("cached the index of %s (%d images) in %s", index.name, len(index), file)
    except OSError as exc:  # a read-only home is not an error
        log.warning("could not cache the index of %s: %s", index.name, exc)


def cached(key: dict[str, Any], build: Callable[[Watched], FileIndex]) -> FileIndex:
    """``build(watched)`` the index, or load it from the cache when nothing it depends on
    changed; ``build`` adds every folder it scans and file it reads to ``watched``."""
    file = key_file("index", key, ".npz")
    if file is not None and file.exists():
        index = _load(file, key)
        if index is not None:
            log.info("index of %s (%d images) loaded from %s", index.name, len(index), file)
            return index
    watched = Watched()
    index = build(watched)
    if file is not None and len(index) >= MIN_ITEMS:
        _save(file, key, index, sorted(set(watched.paths)))
    return index
