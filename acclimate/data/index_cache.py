"""Cache of large file indexes, so that a source of a million images is listed once.

The index of a folder or CSV source (packed paths, labels, classes) is saved as one ``.npz`` in
``$ACCLIMATE_CACHE_DIR/index`` (default ``~/.cache/acclimate/index``) when it holds at least
``MIN_ITEMS`` images. It is reused while every folder scanned (and the CSV file) keeps its
``mtime``: adding, removing or renaming a file changes its folder's mtime, which rebuilds the
index. Set ``ACCLIMATE_CACHE_DIR=off`` to disable it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from acclimate.data.sources import FileSource

log = logging.getLogger(__name__)

MIN_ITEMS = 20_000  # smaller sources list in well under a second: not worth a cache file
FORMAT = 1
_recording: list[list[str]] = []


def cache_dir(kind: str) -> Path | None:
    """``$ACCLIMATE_CACHE_DIR/KIND`` (default ``~/.cache/acclimate/KIND``); None when off."""
    root = os.environ.get("ACCLIMATE_CACHE_DIR")
    if root is not None and root.strip().lower() in ("off", "0", "none", ""):
        return None
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "acclimate"
    return base / kind


def key_file(kind: str, key: dict[str, Any], suffix: str) -> Path | None:
    folder = cache_dir(kind)
    if folder is None:
        return None
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    return folder / f"{digest}{suffix}"


def record(path: str | os.PathLike[str]) -> None:
    """Note a folder or file whose mtime the index being built depends on."""
    if _recording:
        _recording[-1].append(os.fspath(path))


def _mtimes(paths: list[str]) -> np.ndarray:
    return np.array([os.stat(p).st_mtime_ns for p in paths], dtype=np.int64)


def _load(file: Path, key: dict[str, Any], channels: int) -> FileSource | None:
    from acclimate.data.sources import FileSource, _PathArray

    try:
        with np.load(file, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            if meta["format"] != FORMAT or meta["key"] != key:
                return None
            watched = meta["watched"]
            if not np.array_equal(_mtimes(watched), z["mtimes"]):
                log.info("index cache %s is stale: rebuilding", file)
                return None
            paths = _PathArray.from_buffer(z["buffer"].tobytes(), z["offsets"])
            return FileSource(meta["name"], paths, z["labels"], meta["classes"], channels)
    except (OSError, ValueError, KeyError) as exc:  # missing, corrupt or stale: rebuild
        log.debug("index cache %s not used: %s", file, exc)
        return None


def _save(file: Path, key: dict[str, Any], source: FileSource, watched: list[str]) -> None:
    meta = {
        "format": FORMAT,
        "key": key,
        "name": source.name,
        "classes": source.classes,
        "watched": watched,
    }
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        tmp = file.with_name(f".{file.name}.{os.getpid()}.tmp.npz")
        np.savez(
            tmp,
            meta=np.array(json.dumps(meta)),
            buffer=np.frombuffer(source.paths._buffer, dtype=np.uint8),
            offsets=source.paths._offsets,
            labels=source.labels,
            mtimes=_mtimes(watched),
        )
        os.replace(tmp, file)
        log.info("cached the index of %s (%d images) in %s", source.name, len(source), file)
    except OSError as exc:  # a read-only home is not an error
        log.warning("could not cache the index of %s: %s", source.name, exc)


def cached(key: dict[str, Any], build: Callable[[], FileSource], channels: int) -> FileSource:
    """``build()`` the index, or load it from the cache when nothing it depends on changed."""
    file = key_file("index", key, ".npz")
    if file is not None and file.exists():
        source = _load(file, key, channels)
        if source is not None:
            log.info("index of %s (%d images) loaded from %s", source.name, len(source), file)
            return source
    _recording.append([])
    try:
        source = build()
    finally:
        watched = _recording.pop()
    if file is not None and len(source) >= MIN_ITEMS:
        _save(file, key, source, sorted(set(watched)))
    return source
