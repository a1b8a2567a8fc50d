"""MedMNIST-style ``.npz`` sources: uint8 ``<split>_images`` (N, H, W) or (N, H, W, C) arrays
with optional ``<split>_labels`` and ``classes``, or one ``images`` array without splits."""

from __future__ import annotations

import logging
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch

from acclimate.data.readers import DataError, describe_error, to_uint8_tensor
from acclimate.data.sources.base import ImageSource
from acclimate.data.sources.splits import (
    canonical_split,
    missing_split,
    ordered_splits,
    with_split,
)

log = logging.getLogger(__name__)


class NpzSource(ImageSource):
    """Image arrays in a ``.npz`` file: item i is row ``rows[i]`` of array ``keys[key_ids[i]]``.

    Arrays are loaded on first use, once per process, and are not pickled: a DataLoader worker
    started by spawn loads them itself.
    """

    def __init__(
        self,
        name: str,
        path: str | Path,
        keys: Sequence[str],
        key_ids: np.ndarray,
        rows: np.ndarray,
        labels: np.ndarray,
        classes: Sequence[str],
        channels: int = 3,
    ) -> None:
        super().__init__(name, classes, labels, channels)
        self.path = Path(path)
        self.keys = list(keys)
        self.key_ids = np.asarray(key_ids, dtype=np.int64)
        self.rows = np.asarray(rows, dtype=np.int64)
        self._arrays: dict[str, np.ndarray] = {}

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_arrays": {}}

    def _array(self, key: str) -> np.ndarray:
        if key not in self._arrays:
            with np.load(self.path, allow_pickle=False) as npz:
                self._arrays[key] = npz[key]
        return self._arrays[key]

    def load(self, i: int) -> torch.Tensor:
        return to_uint8_tensor(self._array(self.keys[self.key_ids[i]])[self.rows[i]], self.channels)

    def describe(self, i: int) -> str:
        return f"{self.path}[{self.keys[self.key_ids[i]]}][{self.rows[i]}]"

    def decoded_nbytes(self) -> int:
        """channels x H x W bytes per item of each (N, H, W[, C]) uint8 array, from the headers."""
        shapes = [_npz_header(self.path, key)[0] for key in self.keys]
        counts = np.bincount(self.key_ids, minlength=len(self.keys))
        return int(
            sum(int(c) * self.channels * s[1] * s[2] for c, s in zip(counts, shapes, strict=True))
        )

    def _subset(self, idx: np.ndarray, name: str) -> NpzSource:
        sub = NpzSource(
            name,
            self.path,
            self.keys,
            self.key_ids[idx],
            self.rows[idx],
            self.labels[idx],
            self.classes,
            self.channels,
        )
        sub._arrays = self._arrays  # share what this process has already loaded
        return sub


def _npz_header(path: Path, key: str) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of one array in a .npz, read from its header without loading it."""
    with zipfile.ZipFile(path) as zf, zf.open(f"{key}.npy") as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(f)
            return shape, dtype
        if version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(f)
            return shape, dtype
    with np.load(path, allow_pickle=False) as npz:
        array = npz[key]
        return array.shape, array.dtype


def _npz_splits(path: Path, keys: Iterable[str]) -> dict[str | None, str]:
    """Canonical split (None for a plain ``images`` array) -> images key."""
    found: dict[str | None, str] = {}
    for key in keys:
        if key == "images":
            found[None] = key
        elif key.endswith("_images"):
            split = canonical_split(key[: -len("_images")])
            if split in found:
                raise DataError(
                    f"{path} has both {found[split]} and {key} for the {split} split: keep one"
                )
            found[split] = key
    if None in found and len(found) > 1:
        raise DataError(f"{path} has both 'images' and per-split '<split>_images' arrays: keep one")
    return found


def _npz_labels(path: Path, npz: np.lib.npyio.NpzFile, key: str, n: int) -> np.ndarray:
    """Labels (n,) int64 for one images key, -1 when absent or multi-label."""
    labels_key = key[: -len("images")] + "labels"
    if labels_key not in npz.files:
        return np.full(n, -1, dtype=np.int64)
    labels = npz[labels_key]
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        log.warning(
            "%s: %s has shape %s (multi-label); using %s unlabelled",
            path,
            labels_key,
            labels.shape,
            key,
        )
        return np.full(n, -1, dtype=np.int64)
    if len(labels) != n:
        raise DataError(f"{path}: {labels_key} has {len(labels)} labels for {n} images in {key}")
    integral = labels.dtype.kind in "iub" or (
        labels.dtype.kind == "f" and bool(np.all(np.mod(labels, 1) == 0))
    )
    if not integral:
        raise DataError(f"{path}: {labels_key} holds non-integer values; store class ids")
    return np.maximum(labels.astype(np.int64), -1)


def _npz_arrays(
    path: Path, npz: np.lib.npyio.NpzFile, keys: list[str]
) -> tuple[list[int], list[np.ndarray]]:
    """(image count, labels) of each images key, checked from the array headers."""
    sizes, labels = [], []
    for key in keys:
        shape, dtype = _npz_header(path, key)
        if dtype != np.uint8 or len(shape) not in (3, 4):
            raise DataError(
                f"{path}: {key} is {dtype} {shape}; expected uint8 images (N, H, W) or (N, H, W, C)"
            )
        sizes.append(shape[0])
        labels.append(_npz_labels(path, npz, key, shape[0]))
    return sizes, labels


def _npz_classes(path: Path, npz: np.lib.npyio.NpzFile, labels: list[np.ndarray]) -> list[str]:
    """The ``classes`` array as strings, else "0".."K-1" for the largest label K-1."""
    top = max(int(lab.max(initial=-1)) for lab in labels)
    if "classes" not in npz.files:
        return [str(k) for k in range(top + 1)]
    try:
        classes = [str(c) for c in npz["classes"].reshape(-1)]
    except ValueError as exc:
        raise DataError(f"{path}: 'classes' must be a string array, not objects") from exc
    if top >= len(classes):
        raise DataError(f"{path}: label {top} but only {len(classes)} classes in 'classes'")
    return classes


def npz_splits(path: Path) -> list[str]:
    """Canonical split names of a ``.npz`` source, in order; [] for a plain ``images`` array."""
    with np.load(path, allow_pickle=False) as npz:
        return ordered_splits(s for s in _npz_splits(path, npz.files) if s is not None)


def npz_source(path: Path, split: str | None, channels: int) -> NpzSource:
    """The images of one split of a ``.npz`` (or all of them), headers read, arrays not loaded."""
    try:
        npz = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise DataError(f"cannot read {path}: {describe_error(exc)}") from exc
    with npz:
        splits = _npz_splits(path, npz.files)
        if not splits:
            raise DataError(
                f"{path} has no image arrays (it has {', '.join(npz.files) or 'none'})"
                ": expected train_images, val_images, test_images (+ _labels)"
            )
        present = ordered_splits(s for s in splits if s is not None)
        if split is not None and split not in splits:
            raise missing_split(path, split, present)
        keys = [splits[s] for s in present] if present else [splits[None]]
        sizes, labels = _npz_arrays(path, npz, keys)
        classes = _npz_classes(path, npz, labels)
    chosen = [keys.index(splits[split])] if split is not None else range(len(keys))
    key_ids = np.concatenate([np.full(sizes[k], k, dtype=np.int64) for k in chosen])
    rows = np.concatenate([np.arange(sizes[k], dtype=np.int64) for k in chosen])
    if len(rows) == 0:
        raise DataError(f"{path}: {', '.join(keys[k] for k in chosen)} holds no images")
    name = with_split(f"npz {path}", split, present)
    labels_chosen = np.concatenate([labels[k] for k in chosen])
    return NpzSource(name, path, keys, key_ids, rows, labels_chosen, classes, channels)
