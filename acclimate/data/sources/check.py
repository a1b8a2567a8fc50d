"""Check a source before training: decode a sample and fail in seconds if too few are usable."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from acclimate.data.bad_files import BadFileLog, BadItem, decode
from acclimate.data.readers import DataError
from acclimate.data.sources.base import ImageSource
from acclimate.data.sources.splits import EXPECTED

log = logging.getLogger(__name__)


def check_source(
    source: ImageSource,
    sample: int = 64,
    min_good_fraction: float = 0.5,
    skip_constant: bool = False,
    bad_file_log: str | Path | BadFileLog | None = None,
) -> dict[str, int]:
    """Decode a random sample of up to ``sample`` items and fail early if too few are usable.

    Returns the number of bad sampled items per reason (``readers.BAD_REASONS``). Raises
    DataError when the source is empty, when an optional reader is missing, or when fewer than
    ``min_good_fraction`` of the sample are usable, naming the counts per reason and up to three
    bad files. With ``skip_constant``, blank images count as bad. Bad files found are appended
    to ``bad_file_log`` (``path<TAB>[reason] message``). Run it before training so a broken
    path fails in seconds, not mid-epoch.
    """
    n = len(source)
    if n == 0:
        raise DataError(f"{source.name} holds no images: {EXPECTED}")
    rng = np.random.default_rng(0)
    picked = np.sort(rng.choice(n, size=min(max(sample, 1), n), replace=False))
    bad: list[tuple[str, BadItem]] = []
    for i in picked.tolist():
        item = decode(source, i, skip_constant)
        if isinstance(item, BadItem):
            bad.append((source.describe(i), item))
    counts: dict[str, int] = {}
    for _, item in bad:
        counts[item.reason] = counts.get(item.reason, 0) + 1
    if bad_file_log is not None:
        listing = bad_file_log if isinstance(bad_file_log, BadFileLog) else BadFileLog(bad_file_log)
        for where, item in bad:
            listing.add(where, item.reason, item.text)
    good = len(picked) - len(bad)
    per_reason = ", ".join(f"{r} {c}" for r, c in sorted(counts.items()))
    examples = "; ".join(f"{where} ({item.text})" for where, item in bad[:3])
    if good < min_good_fraction * len(picked):
        raise DataError(
            f"{source.name}: only {good} of {len(picked)} sampled images are "
            f"readable (need {min_good_fraction:.0%}; bad: {per_reason}), e.g. {examples}; "
            "fix or remove the bad files, or check the path, format, channels and bands"
        )
    log.info(
        "%s: %d images, %d classes; %d of %d sampled images readable",
        source.name,
        n,
        len(source.classes),
        good,
        len(picked),
    )
    if bad:
        log.warning(
            "%s: %d of %d sampled images unusable and will be skipped (%s), e.g. %s",
            source.name,
            len(bad),
            len(picked),
            per_reason,
            examples,
        )
    return counts
