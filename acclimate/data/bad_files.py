"""The bad-file rules in one place: decode an item or say why it cannot be used (``decode``),
and the run's bad-file log, one ``path<TAB>[reason] message`` line per bad item
(``BadFileLog``, read back with ``read_bad_file_log`` and ``bad_file_counts``).

Each DataLoader worker appends its own finds to the same log; an entry is one short
``O_APPEND`` write, so lines from several processes do not interleave, and readers merge the
duplicates that two workers meeting the same file at once may leave.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

from acclimate.data.readers import (
    BAD_REASONS,
    MissingExtra,
    bad_reason,
    describe_error,
    reject_constant,
)


class Loadable(Protocol):
    def load(self, i: int) -> torch.Tensor: ...


@dataclass(frozen=True)
class BadItem:
    """Why an item cannot be used: ``reason`` is one of ``readers.BAD_REASONS``, ``text`` the
    error on one line."""

    reason: str
    text: str


def decode(source: Loadable, i: int, skip_constant: bool = False) -> torch.Tensor | BadItem:
    """Item ``i`` of ``source`` (C, H, W), or a BadItem when it cannot be used: any error while
    decoding and, with ``skip_constant``, an image of one value. A missing optional reader
    (MissingExtra) is raised: it concerns every file of the format, not this one."""
    try:
        image = source.load(i)
        if skip_constant:
            reject_constant(image)
    except MissingExtra:
        raise
    except Exception as exc:  # decoders raise OSError, ValueError, SyntaxError, ...
        return BadItem(bad_reason(exc), describe_error(exc))
    return image


def _one_field(text: str) -> str:
    """Text safe for one tab-separated field of a one-line log entry."""
    return " ".join(text.split("\t")).replace("\n", " ").replace("\r", " ")


def _parse(text: str, entries: dict[str, str]) -> None:
    """Add the ``where<TAB>reason`` lines of ``text`` to ``entries``, the first reason kept."""
    for line in text.splitlines():
        where, _, reason = line.partition("\t")
        if where:
            entries.setdefault(where, reason)


def read_bad_file_log(path: str | Path) -> dict[str, str]:
    """The entries of a bad-file log as {path: reason}, duplicates merged; {} if it does not exist.

    Each DataLoader worker writes its own finds, so the count for a run is ``len`` of this.
    """
    path = Path(path)
    entries: dict[str, str] = {}
    if path.exists():
        _parse(path.read_text(encoding="utf-8"), entries)
    return entries


def bad_file_counts(path: str | Path) -> dict[str, int]:
    """Distinct bad items per reason (``readers.BAD_REASONS``) in a bad-file log."""
    counts: dict[str, int] = {}
    for reason in read_bad_file_log(path).values():
        kind = reason[1 : reason.index("]")] if reason.startswith("[") and "]" in reason else ""
        kind = kind if kind in BAD_REASONS else "unreadable"
        counts[kind] = counts.get(kind, 0) + 1
    return counts


class BadFileLog:
    """A bad-file log that lists each item once, across processes and epochs.

    The entries are kept in memory; before an append only the bytes added since the last look
    (by other workers, or an earlier check) are read, so logging N bad files costs O(N), not
    O(N^2) as re-reading the whole log for each would.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._listed: set[str] = set()
        self._read_to = 0  # bytes of the file parsed into _listed

    def __str__(self) -> str:
        return str(self.path)

    def _catch_up(self) -> None:
        """Parse the complete lines appended to the file since the last call."""
        try:
            with open(self.path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size < self._read_to:  # truncated or replaced: start again
                    self._listed, self._read_to = set(), 0
                f.seek(self._read_to)
                new = f.read(size - self._read_to)
        except FileNotFoundError:
            self._listed, self._read_to = set(), 0
            return
        complete = new[: new.rfind(b"\n") + 1]  # a line still being written waits
        entries: dict[str, str] = {}
        _parse(complete.decode("utf-8"), entries)
        self._listed.update(entries)
        self._read_to += len(complete)

    def add(self, where: str, reason: str, text: str) -> bool:
        """Append ``where<TAB>[reason] text`` unless ``where`` is listed already; True when
        written."""
        where = _one_field(where)
        self._catch_up()
        if where in self._listed:
            return False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = f"{where}\t[{reason}] {_one_field(text)}\n".encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)
        self._listed.add(where)
        return True
