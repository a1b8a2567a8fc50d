"""``PathArray``: many file paths packed in one bytes buffer, for sources of millions of files."""

from __future__ import annotations

import operator
import os
from array import array
from collections.abc import Iterable

import numpy as np


class PathArray:
    """Strings packed in one bytes buffer plus int64 offsets: path ``i`` is
    ``buffer[offsets[i]:offsets[i + 1]]`` (file-system encoding).

    Cheap to pickle into DataLoader workers, and no per-item Python objects whose reference
    counts would make forked workers copy the list page by page (pytorch/pytorch#13246).
    """

    def __init__(self, paths: Iterable[str]) -> None:
        buffer = bytearray()  # grown in place: no list of a million bytes objects
        ends = array("q")
        for p in paths:
            buffer += os.fsencode(p)
            ends.append(len(buffer))
        self._buffer = bytes(buffer)
        self._offsets = np.zeros(len(ends) + 1, dtype=np.int64)
        self._offsets[1:] = np.frombuffer(ends, dtype=np.int64) if ends else []

    @classmethod
    def from_buffer(cls, buffer: bytes, offsets: np.ndarray) -> PathArray:
        """The inverse of (``buffer``, ``offsets``), e.g. as saved by the index cache."""
        self = cls.__new__(cls)
        self._buffer, self._offsets = buffer, np.asarray(offsets, dtype=np.int64)
        return self

    @property
    def buffer(self) -> bytes:
        """All paths, encoded and concatenated."""
        return self._buffer

    @property
    def offsets(self) -> np.ndarray:
        """int64 (N + 1,): where each path starts in ``buffer``, then the end."""
        return self._offsets

    def may_hold(self, text: str) -> bool:
        """False when no path contains ``text`` (a fast scan of the packed bytes)."""
        return os.fsencode(text) in self._buffer.lower()

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, i: int) -> str:
        i = range(len(self))[operator.index(i)]
        return os.fsdecode(self._buffer[self._offsets[i] : self._offsets[i + 1]])
