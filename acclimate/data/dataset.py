"""A torch Dataset over an ImageSource that skips unreadable files instead of crashing mid-epoch."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch
from torch.utils.data import Dataset, default_collate

from acclimate.data.bad_files import (
    BadFileLog,
    BadItem,
    bad_file_counts,
    decode,
    read_bad_file_log,
)
from acclimate.data.decoded_cache import DecodedCache
from acclimate.data.readers import DataError
from acclimate.data.sources.base import ImageSource

# read_bad_file_log and bad_file_counts live in bad_files; importable from here as before
__all__ = ["ImageDataset", "bad_file_counts", "collate_kept", "read_bad_file_log"]

log = logging.getLogger(__name__)


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

    With ``cache`` (`decoded_cache.DecodedCache`, filled with the same ``skip_constant``) items
    are decoded from memory instead of the source, bad ones included: the same images, the
    same reports, the same items standing in for bad ones.
    """

    max_tries = 50  # consecutive unreadable items before giving up with a DataError

    def __init__(
        self,
        source: ImageSource,
        transform: Callable[[torch.Tensor], Any] | None = None,
        bad_file_log: str | Path | None = None,
        skip_constant: bool = False,
        on_bad: Literal["next", "drop"] = "next",
        cache: DecodedCache | None = None,
    ) -> None:
        if on_bad not in ("next", "drop"):
            raise ValueError(f"on_bad must be 'next' or 'drop', got {on_bad!r}")
        if cache is not None and (len(cache), cache.skip_constant) != (len(source), skip_constant):
            raise ValueError(
                f"the cache holds {len(cache)} items decoded with skip_constant "
                f"{cache.skip_constant}, not the source's {len(source)} with {skip_constant}"
            )
        self.cache = cache
        self.source = source
        self.on_bad = on_bad
        self.skip_constant = skip_constant
        self.transform = transform
        self.bad_file_log = None if bad_file_log is None else BadFileLog(bad_file_log)
        if self.bad_file_log is not None:
            self.bad_file_log.path.parent.mkdir(parents=True, exist_ok=True)
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
            image = self._decode(i)
            if isinstance(image, BadItem):
                last_error = image.text
                self.report_bad(i, image.reason, image.text)
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

    def _decode(self, i: int) -> torch.Tensor | BadItem:
        """Item ``i`` (C, H, W) or why it cannot be used: from the cache when there is one."""
        if self.cache is not None:
            return self.cache.get(i)
        return decode(self.source, i, self.skip_constant)

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
        elif self.bad_file_log.add(where, reason, text):
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
