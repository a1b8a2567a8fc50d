"""A torch Dataset over an ImageSource that skips unreadable files instead of crashing mid-epoch."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch
from torch.utils.data import Dataset, default_collate

from acclimate.data.readers import (
    BAD_REASONS,
    DataError,
    MissingExtra,
    bad_reason,
    describe_error,
    reject_constant,
)
from acclimate.data.sources import ImageSource

log = logging.getLogger(__name__)


def _one_field(text: str) -> str:
    """Text safe for one tab-separated field of a one-line log entry."""
    return " ".join(text.split("\t")).replace("\n", " ").replace("\r", " ")


def read_bad_file_log(path: str | Path) -> dict[str, str]:
    """The entries of a bad-file log as {path: reason}, duplicates merged; {} if it does not exist.

    Each DataLoader worker writes its own finds, so the count for a run is ``len`` of this.
    """
    path = Path(path)
    if not path.exists():
        return {}
    entries: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        where, _, reason = line.partition("\t")
        if where:
            entries.setdefault(where, reason)
    return entries


def bad_file_counts(path: str | Path) -> dict[str, int]:
    """Distinct bad items per reason (``readers.BAD_REASONS``) in a bad-file log."""
    counts: dict[str, int] = {}
    for reason in read_bad_file_log(path).values():
        kind = reason[1 : reason.index("]")] if reason.startswith("[") and "]" in reason else ""
        kind = kind if kind in BAD_REASONS else "unreadable"
        counts[kind] = counts.get(kind, 0) + 1
    return counts


def append_bad_file(log_file: str | Path, where: str, reason: str, text: str) -> bool:
    """Append ``where<TAB>[reason] text`` to a bad-file log unless ``where`` is listed already;
    True when written. One short append: lines from several workers do not interleave."""
    log_file = Path(log_file)
    where = _one_field(where)
    if where in read_bad_file_log(log_file):
        return False
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "a", encoding="utf-8") as f:
        f.write(f"{where}\t[{reason}] {_one_field(text)}\n")
    return True


class ImageDataset(Dataset):
    """Items ``(transform(image), label)`` of an ImageSource; ``image`` is (C, H, W), uint8 or
    float32.

    When an item cannot be used (missing, corrupt, truncated, wrong band count or pixel type,
    mostly nodata, declaring more than ``data.max_pixels`` pixels, and with ``skip_constant``
    all one value), the file is reported once per process (a WARNING,
    and a ``path<TAB>[reason] message`` line appended to ``bad_file_log``) and the next
    readable item is returned instead (``on_bad="next"``, for training). With ``on_bad="drop"``
    (evaluation, embeddings: no image may stand in for another) items are
    ``(transform(image), label, index)`` and a bad item is ``None``; ``collate_kept`` drops
    those from a batch. ``n_bad`` counts the distinct bad items this process met and ``bad``
    maps their indices to reasons; DataLoader workers each keep their own, so use
    ``read_bad_file_log`` for a run total.
    """

    max_tries = 50  # consecutive unreadable items before giving up with a DataError

    def __init__(
        self,
        source: ImageSource,
        transform: Callable[[torch.Tensor], Any] | None = None,
        bad_file_log: str | Path | None = None,
        skip_constant: bool = False,
        on_bad: Literal["next", "drop"] = "next",
    ) -> None:
        if on_bad not in ("next", "drop"):
            raise ValueError(f"on_bad must be 'next' or 'drop', got {on_bad!r}")
        self.source = source
        self.on_bad = on_bad
        self.skip_constant = skip_constant
        self.transform = transform
        self.bad_file_log = None if bad_file_log is None else Path(bad_file_log)
        if self.bad_file_log is not None:
            self.bad_file_log.parent.mkdir(parents=True, exist_ok=True)
        self.n_bad = 0
        self.bad: dict[int, str] = {}

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> tuple[Any, ...] | None:
        n = len(self.source)
        index = range(n)[index]  # IndexError past the end, as the Dataset protocol expects
        last_error = ""
        tries = 1 if self.on_bad == "drop" else min(self.max_tries, n)
        for step in range(tries):
            i = (index + step) % n
            try:
                image = self.source.load(i)
                if self.skip_constant:
                    reject_constant(image)
            except MissingExtra:
                raise
            except Exception as exc:  # decoders raise OSError, ValueError, SyntaxError, ...
                last_error = describe_error(exc)
                self.report_bad(i, bad_reason(exc), last_error)
                continue
            label = int(self.source.labels[i])
            image = image if self.transform is None else self.transform(image)
            return (image, label, i) if self.on_bad == "drop" else (image, label)
        if self.on_bad == "drop":
            return None
        raise DataError(
            f"{self.source.name}: no readable image in {min(self.max_tries, n)} items "
            f"from {self.source.describe(index)} on (last error: {last_error}); "
            "run `acclimate stats` on the source and fix or remove the bad files"
        )

    def report_bad(self, i: int, reason: str, text: str) -> None:
        """Record item ``i`` as bad (once): a WARNING and a line in ``bad_file_log``. Also for
        problems found after reading, e.g. features that are not finite (``eval/features.py``)."""
        if i in self.bad:
            return
        self.bad[i] = reason
        self.n_bad += 1
        where = self.source.describe(i)
        what = "leaving out image" if reason == "not finite" else "skipping unreadable image"
        if self.bad_file_log is None:
            log.warning("%s %s ([%s] %s)", what, where, reason, text)
        elif append_bad_file(self.bad_file_log, where, reason, text):
            log.warning(
                "%s %s ([%s] %s); listed in %s", what, where, reason, text, self.bad_file_log
            )
        else:  # met by another worker or epoch
            log.debug("%s %s (already logged)", what, where)


def collate_kept(batch: list[Any]) -> tuple[Any, torch.Tensor, torch.Tensor] | None:
    """Collate ``(image, label, index)`` items of an ``on_bad="drop"`` dataset, leaving out the
    bad ones (``None``): (images, labels, kept indices), or None when the whole batch is bad."""
    kept = [item for item in batch if item is not None]
    if not kept:
        return None
    images, labels, indices = default_collate(kept)
    return images, labels, indices
