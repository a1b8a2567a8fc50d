"""Folder sources: class subfolders (``ROOT/CLASS/*.jpg``), optionally under split folders
(``ROOT/train/CLASS/``, ``ROOT/val/``...), or a flat folder of unlabelled images."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from acclimate.data import index_cache
from acclimate.data.index_cache import FileIndex, Watched
from acclimate.data.paths import PathArray
from acclimate.data.readers import DataError, is_image_file
from acclimate.data.sources.base import FileSource
from acclimate.data.sources.splits import (
    EXPECTED,
    SPLIT_ALIASES,
    missing_split,
    ordered_splits,
    with_split,
)

log = logging.getLogger(__name__)

_IGNORED_DIRS = frozenset({"__MACOSX"})


def _scan_dir(path: Path, watched: Watched) -> tuple[list[str], list[str]]:
    """(image file names, subfolder names) directly in ``path``, sorted, hidden ones left out.

    Every folder scanned is added to ``watched`` for the index cache (its mtime changes when
    entries are added, removed or renamed in it)."""
    watched.add(path)
    files, dirs = [], []
    with os.scandir(path) as entries:
        for entry in entries:
            if entry.name.startswith(".") or entry.name in _IGNORED_DIRS:
                continue
            if entry.is_dir():
                dirs.append(entry.name)
            elif is_image_file(entry.name) and entry.is_file():
                files.append(entry.name)
    return sorted(files), sorted(dirs)


def _images_under(path: Path, watched: Watched) -> list[str]:
    """Image paths under ``path`` at any depth, in sorted order."""
    files, dirs = _scan_dir(path, watched)
    found = [os.path.join(path, f) for f in files]
    for d in dirs:
        found += _images_under(path / d, watched)
    return found


def _split_dirs(root: Path, watched: Watched) -> dict[str, str]:
    """Canonical split name -> folder name when ``root`` is laid out in split folders, else {}."""
    _, dirs = _scan_dir(root, watched)
    found: dict[str, str] = {}
    for d in dirs:
        split = SPLIT_ALIASES.get(d.lower())
        if split is None:
            continue
        if split in found:
            raise DataError(
                f"{root} has both {found[split]}/ and {d}/ as the {split} split: "
                "merge or rename one"
            )
        found[split] = d
    others = [d for d in dirs if d.lower() not in SPLIT_ALIASES]
    if found and others:
        if not any(_scan_dir(root / d, watched)[1] for d in found.values()):
            return {}  # class folders that happen to be called e.g. "test"
        if ignored := [d for d in others if _images_under(root / d, watched)]:
            log.warning(
                "%s: ignoring images in %s beside the split folders", root, ", ".join(ignored)
            )
    return found


def _scan_layout(folder: Path, watched: Watched) -> tuple[list[str], dict[str, list[str]]]:
    """(loose image paths, {class name: image paths}) of one folder (the root or a split)."""
    files, dirs = _scan_dir(folder, watched)
    by_class = {d: images for d in dirs if (images := _images_under(folder / d, watched))}
    loose = [os.path.join(folder, f) for f in files]
    if by_class and loose:
        log.warning(
            "%s: ignoring %d images beside the class folders (e.g. %s)",
            folder,
            len(loose),
            loose[0],
        )
        loose = []
    return loose, by_class


def folder_splits(root: Path) -> list[str]:
    """Canonical split names of a folder source, in order; [] when it has no split folders."""
    return ordered_splits(_split_dirs(root, Watched()))


def folder_source(root: Path, split: str | None, channels: int) -> FileSource:
    """The images under ``root`` (one split of it, or all): listed, or from the index cache."""
    key = {"kind": "folder", "root": str(root), "split": split}
    index = index_cache.cached(key, lambda watched: _scan_folder_index(root, split, watched))
    return FileSource.from_index(index, channels)


def _scan_folder_index(root: Path, split: str | None, watched: Watched) -> FileIndex:
    splits = _split_dirs(root, watched)
    present = ordered_splits(splits)
    if split is not None and split not in splits:
        raise missing_split(root, split, present)
    folders = [root / splits[s] for s in present] if splits else [root]
    layouts = {folder: _scan_layout(folder, watched) for folder in folders}
    classes = sorted({c for _, by_class in layouts.values() for c in by_class})
    class_index = {c: k for k, c in enumerate(classes)}

    paths: list[str] = []
    labels: list[int] = []
    for folder in [root / splits[split]] if split is not None else folders:
        loose, by_class = layouts[folder]
        paths += loose
        labels += [-1] * len(loose)
        for name, images in by_class.items():
            paths += images
            labels += [class_index[name]] * len(images)
    if not paths:
        where = root / splits[split] if split is not None else root
        raise DataError(f"no images found in {where}: {EXPECTED}")
    name = with_split(f"folder {root}", split, present)
    return FileIndex(name, PathArray(paths), np.array(labels, dtype=np.int64), classes)
