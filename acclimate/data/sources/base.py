"""``ImageSource`` (what every source offers) and ``FileSource`` (image files on disk)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch

from acclimate.data.index_cache import FileIndex
from acclimate.data.paths import PathArray
from acclimate.data.readers import (
    DEFAULT_OPTIONS,
    MissingExtra,
    ReadOptions,
    check_channels,
    describe_error,
    is_volume,
    nifti_slices,
    read_image,
)

log = logging.getLogger(__name__)


class ImageSource:
    """An indexed collection of images with optional labels.

    Images are returned as (C, H, W) tensors with C = ``channels``, uint8 for 8-bit data and
    float32 otherwise (``acclimate.data.readers`` documents the ranges);
    ``labels`` is int64 (N,) with -1 for unlabelled items, indexing into ``classes``.
    """

    def __init__(self, name: str, classes: Sequence[str], labels: np.ndarray, channels: int):
        self.name = name
        self.classes = list(classes)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.channels = check_channels(channels)

    def __len__(self) -> int:
        return len(self.labels)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.name}: {len(self)} images, "
            f"{len(self.classes)} classes, {self.channels} channel(s))"
        )

    @property
    def has_labels(self) -> bool:
        """True when the source names classes and at least one item has a label."""
        return bool(self.classes) and bool((self.labels >= 0).any())

    def load(self, i: int) -> torch.Tensor:
        """Decode item ``i`` as (channels, H, W) uint8 or float32; raises on a bad file."""
        raise NotImplementedError

    def describe(self, i: int) -> str:
        """Where item ``i`` comes from (a path), for logs and error messages."""
        raise NotImplementedError

    def decoded_nbytes(self) -> int | None:
        """Bytes that all items take decoded, when the source knows without decoding (array
        headers); None otherwise (``decoded_cache.survey`` then estimates it from a sample)."""
        return None

    def subset(self, indices: Sequence[int]) -> ImageSource:
        """A source holding the given items, in the given order, with the same classes."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < -len(self) or idx.max() >= len(self)):
            raise IndexError(f"subset indices out of range for {self.name} ({len(self)} items)")
        idx = idx % max(len(self), 1)
        return self._subset(idx, f"{self.name} [subset of {len(idx)}]")

    def _subset(self, idx: np.ndarray, name: str) -> ImageSource:
        raise NotImplementedError


class FileSource(ImageSource):
    """Image files on disk (folders and CSV manifests): PIL, tifffile, pydicom or nibabel.

    ``slices`` (int32, one per item, -1 for 2D files) is the slice of a volume file; a volume's
    path repeats once per slice.
    """

    def __init__(
        self,
        name: str,
        paths: Sequence[str] | PathArray,
        labels: np.ndarray,
        classes: Sequence[str],
        channels: int = 3,
        options: ReadOptions = DEFAULT_OPTIONS,
        slices: np.ndarray | None = None,
    ) -> None:
        super().__init__(name, classes, labels, channels)
        self.paths = paths if isinstance(paths, PathArray) else PathArray(paths)
        self.options = options
        self.slices = None if slices is None else np.asarray(slices, dtype=np.int32)
        if len(self.paths) != len(self.labels):
            raise ValueError(f"{len(self.paths)} paths but {len(self.labels)} labels")

    @classmethod
    def from_index(cls, index: FileIndex, channels: int) -> FileSource:
        """The source of a listed (or cached) folder or CSV index."""
        return cls(index.name, index.paths, index.labels, index.classes, channels)

    def _slice(self, i: int) -> int | None:
        if self.slices is None or self.slices[i] < 0:
            return None
        return int(self.slices[i])

    def load(self, i: int) -> torch.Tensor:
        return read_image(self.paths[i], self.channels, self.options, self._slice(i))

    def describe(self, i: int) -> str:
        k = self._slice(i)
        return self.paths[i] if k is None else f"{self.paths[i]}[slice {k}]"

    def _subset(self, idx: np.ndarray, name: str) -> FileSource:
        paths = PathArray(self.paths[int(i)] for i in idx)
        slices = None if self.slices is None else self.slices[idx]
        return FileSource(
            name, paths, self.labels[idx], self.classes, self.channels, self.options, slices
        )


def expand_volumes(source: FileSource) -> FileSource:
    """One item per slice of every NIfTI volume (2D files stay one item); headers only."""
    if not source.paths.may_hold(".nii"):
        return source
    paths: list[str] = []
    labels: list[int] = []
    slices: list[int] = []
    for i in range(len(source)):
        path, label = source.paths[i], int(source.labels[i])
        try:
            n = nifti_slices(path, source.options.slice_axis) if is_volume(path) else 0
        except MissingExtra:
            raise
        except Exception as exc:  # unreadable header: one item, reported when loaded
            log.warning("%s: cannot read the volume header (%s)", path, describe_error(exc))
            n = 0
        k = range(n) if n else [-1]
        paths += [path] * len(k)
        labels += [label] * len(k)
        slices += list(k)
    return FileSource(
        source.name,
        paths,
        np.array(labels, dtype=np.int64),
        source.classes,
        source.channels,
        source.options,
        np.array(slices, dtype=np.int32),
    )
