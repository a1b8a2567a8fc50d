"""Per-channel pixel statistics of a source: mean/std for normalisation (``data.mean: auto``) and
percentiles for clipping, in one streaming pass over a random sample.

Values are in the units the transforms see before normalisation: uint8 images scaled to [0, 1],
float images (16-bit, DICOM, NIfTI, ...) as the readers return them (``acclimate.data.readers``).

Missing values never enter a statistic: files are read with ``ReadOptions.keep_missing`` (nodata
becomes NaN instead of being filled), and any value that is not finite, has ``|v| >= 3.4e38``
(GDAL's float nodata) or equals ``data.nodata`` is left out, per channel, with a WARNING naming
the file. Images that are mostly nodata are skipped like unreadable ones.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from acclimate.data.bad_files import BadItem, decode
from acclimate.data.index_cache import key_file
from acclimate.data.readers import NODATA_LIMIT, DataError, describe_error
from acclimate.data.sources.base import FileSource, ImageSource
from acclimate.fileio import write_json_atomic

log = logging.getLogger(__name__)

PERCENTILES = (0.5, 1.0, 2.0, 50.0, 98.0, 99.0, 99.5)
PERCENTILE_VALUES = 4_000_000  # values kept for percentiles, over all channels and images
NODATA_FILES_LISTED = 100  # images with nodata named in the statistics (all are in the log)


def _key(p: float) -> str:
    return f"{p:g}"


def _sample(source: ImageSource, max_images: int, seed: int) -> tuple[np.ndarray, Any]:
    n = len(source)
    if n == 0:
        raise DataError(f"{source.name} holds no images: nothing to compute statistics from")
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=min(max(max_images, 1), n), replace=False)), rng


def _pixels(image: torch.Tensor) -> torch.Tensor:
    """(C, H, W) -> (C, H*W) float64 in the transforms' units (uint8 / 255)."""
    x = image.reshape(image.shape[0], -1).to(torch.float64)
    return x / 255.0 if image.dtype == torch.uint8 else x


def keeping_missing(source: ImageSource) -> ImageSource:
    """A view of ``source`` whose images keep their missing values as NaN (not filled), so
    that statistics can leave them out; other sources (uint8 arrays) are returned as they are."""
    options = getattr(source, "options", None)
    if not isinstance(source, FileSource) or options is None or options.keep_missing:
        return source
    view = copy.copy(source)
    view.options = dataclasses.replace(options, keep_missing=True)
    return view


def usable(x: torch.Tensor, nodata: float | None = None) -> torch.Tensor | None:
    """Mask of the values of x (C, K) that may enter statistics, or None when all may: finite,
    ``|v| < NODATA_LIMIT`` and not ``nodata``."""
    ok = torch.isfinite(x) & (x.abs() < NODATA_LIMIT)
    if nodata is not None:
        ok &= x != nodata
    return None if bool(ok.all()) else ok


def _nodata_of(source: ImageSource) -> float | None:
    """``data.nodata`` when the readers return raw values (float files, no window)."""
    options = getattr(source, "options", None)
    if options is None or options.nodata is None or options.window is not None:
        return None
    return float(options.nodata)


def source_stats(
    source: ImageSource,
    max_images: int = 10_000,
    seed: int = 0,
    percentiles: Sequence[float] = PERCENTILES,
    clip: Sequence[float] | None = None,
) -> dict[str, Any]:
    """Per-channel ``mean``, ``std`` (population), ``min``, ``max`` and ``percentiles``
    ({"1": [...], "99": [...]}) over a random sample of at most ``max_images`` images.

    One pass, memory bounded whatever the sample: mean and variance are merged image by image
    in float64 (Chan et al.'s parallel update), so they match numpy over the same pixels to
    float64 rounding; percentiles come from up to ``PERCENTILE_VALUES`` pixels drawn uniformly
    from each image (exact when the sample holds fewer pixels). Unreadable files are skipped;
    nodata and non-finite values are left out per channel (``nodata_values`` counts them,
    ``nodata_images`` the images holding any, ``nodata_files`` names up to 100 of those).

    With ``clip`` (percentile bounds ``[low, high]``, e.g. ``[1, 99]``), a second pass over the
    same images adds ``stats["clip"]``: the per-channel bounds and the mean/std of the values
    clipped to them (see ``clip_stats``).
    """
    if clip is not None:
        percentiles = sorted({*percentiles, *(float(p) for p in clip)})
    picked, rng = _sample(source, max_images, seed)
    c = source.channels
    view, nodata = keeping_missing(source), _nodata_of(source)
    run = _Running(c, max(16, PERCENTILE_VALUES // (c * len(picked))), rng)
    skipped = 0
    left_out = 0
    nodata_files: list[str] = []
    for i in picked.tolist():
        image = decode(view, i)
        if isinstance(image, BadItem):
            log.warning(
                "statistics: skipping unreadable image %s (%s)", source.describe(i), image.text
            )
            skipped += 1
            continue
        x, ok = _leave_out_nodata(source.describe(i), _pixels(image), nodata)
        if ok is not None:
            left_out += int((~ok).sum())
            nodata_files.append(source.describe(i))
        run.add(x, ok)
    if not run.kept:
        raise DataError(f"{source.name}: none of the {len(picked)} sampled images is readable")
    _check_counts(source, run.count)
    stats = {
        **run.summary(percentiles),
        "n_images": len(source),
        "sampled": len(picked) - skipped,
        "unreadable": skipped,
        "pixels": int(run.count.max()),
        "nodata_values": left_out,
        "nodata_images": len(nodata_files),
        "nodata_files": nodata_files[:NODATA_FILES_LISTED],
    }
    if clip is not None:
        stats = clip_stats(source, stats, clip, max_images=max_images, seed=seed)
    log.info(
        "statistics over %d images of %s (%d unreadable, %d nodata value(s) left out): "
        "mean %s, std %s",
        stats["sampled"],
        source.name,
        skipped,
        left_out,
        [round(m, 4) for m in stats["mean"]],
        [round(s, 4) for s in stats["std"]],
    )
    return stats


def _leave_out_nodata(
    where: str, x: torch.Tensor, nodata: float | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(x with NaN where a value may not enter statistics, mask of those that may) for the
    pixels x (C, K) of one image, with a WARNING naming it; (x, None) when all may."""
    ok = usable(x, nodata)
    if ok is None:
        return x, None
    n = int((~ok).sum())
    log.warning(
        "statistics: %s holds %d nodata or non-finite value(s) (%.1f%%): left out",
        where,
        n,
        100.0 * n / max(x.numel(), 1),
    )
    return torch.where(ok, x, torch.nan), ok


class _Running:
    """Per-channel count, mean, M2, min and max over the images merged so far, and up to
    ``per_image`` pixels of each (drawn with ``rng``) for the percentiles."""

    def __init__(self, channels: int, per_image: int, rng: np.random.Generator) -> None:
        self.count = torch.zeros(channels, dtype=torch.float64)
        self.mean = torch.zeros(channels, dtype=torch.float64)
        self.m2 = torch.zeros(channels, dtype=torch.float64)
        self.lo = torch.full((channels,), math.inf, dtype=torch.float64)
        self.hi = torch.full((channels,), -math.inf, dtype=torch.float64)
        self.kept: list[np.ndarray] = []
        self.per_image, self.rng = per_image, rng

    def add(self, x: torch.Tensor, ok: torch.Tensor | None) -> None:
        """Merge the pixels x (C, K) of one image; with ``ok`` (C, K) only those values."""
        self.count = _merge(self.mean, self.m2, self.count, x, ok)
        low = x if ok is None else torch.where(ok, x, math.inf)
        high = x if ok is None else torch.where(ok, x, -math.inf)
        self.lo = torch.minimum(self.lo, low.min(1).values)
        self.hi = torch.maximum(self.hi, high.max(1).values)
        k, n = x.shape[1], self.per_image
        cols = x if k <= n else x[:, torch.from_numpy(self.rng.choice(k, n, False))]
        self.kept.append(cols.to(torch.float32).numpy())

    def summary(self, percentiles: Sequence[float]) -> dict[str, Any]:
        """``channels``, ``mean``, ``std``, ``min``, ``max`` and ``percentiles`` as lists."""
        values = np.concatenate(self.kept, axis=1).astype(np.float64)
        q = np.nanpercentile(values, list(percentiles), axis=1)  # (P, C), NaN = left out
        return {
            "channels": len(self.count),
            "mean": self.mean.tolist(),
            "std": (self.m2 / self.count).sqrt().tolist(),
            "min": self.lo.tolist(),
            "max": self.hi.tolist(),
            "percentiles": {_key(p): q[j].tolist() for j, p in enumerate(percentiles)},
        }


def _check_counts(source: ImageSource, count: torch.Tensor) -> None:
    empty = [k for k, n in enumerate(count.tolist()) if n == 0]
    if empty:
        raise DataError(
            f"{source.name}: channel(s) {empty} hold no valid value in the sampled images (all "
            "nodata or non-finite): check data.bands, data.nodata and the files"
        )


def _merge(
    mean: torch.Tensor,
    m2: torch.Tensor,
    count: torch.Tensor,
    x: torch.Tensor,
    ok: torch.Tensor | None = None,
) -> torch.Tensor:
    """Merge the pixels x (C, K) into the running per-channel mean and M2 (in place) and return
    the new per-channel counts (C,); with ``ok`` (C, K) only those values count."""
    if ok is None:
        k = torch.full_like(count, x.shape[1])
        m_i = x.mean(1)
        m2_i = ((x - m_i[:, None]) ** 2).sum(1)
    else:
        k = ok.sum(1).to(count.dtype)
        m_i = torch.where(ok, x, 0.0).sum(1) / k.clamp(min=1)
        m2_i = (torch.where(ok, x - m_i[:, None], 0.0) ** 2).sum(1)
    delta = m_i - mean
    total = count + k
    safe = total.clamp(min=1)
    mean += delta * (k / safe)
    m2 += m2_i + delta**2 * (count * k / safe)
    return total


def check_clip(clip: Sequence[float]) -> tuple[float, float]:
    """Validate percentile bounds ``[low, high]`` with 0 <= low < high <= 100."""
    if len(clip) != 2 or not 0 <= float(clip[0]) < float(clip[1]) <= 100:
        raise ValueError(
            f"clip must be percentile bounds [low, high] with 0 <= low < high <= 100 "
            f"(e.g. [1, 99]), got {list(clip)}"
        )
    return float(clip[0]), float(clip[1])


def clip_stats(
    source: ImageSource,
    stats: dict[str, Any],
    clip: Sequence[float],
    max_images: int = 10_000,
    seed: int = 0,
) -> dict[str, Any]:
    """``stats`` with ``stats["clip"]`` = {"percentiles": [low, high], "low": [...],
    "high": [...], "mean": [...], "std": [...]}: per-channel bounds from the stored
    percentiles and the mean/std of the values clipped to them, in one streaming pass over the
    same sample as ``source_stats`` (same ``max_images`` and ``seed``). Returned unchanged when
    it already holds the clip for these percentiles."""
    lo_p, hi_p = check_clip(clip)
    have = stats.get("clip") or {}
    if have.get("percentiles") == [lo_p, hi_p] and "mean" in have:
        return stats
    table = stats.get("percentiles") or {}
    missing = [_key(p) for p in (lo_p, hi_p) if _key(p) not in table]
    if missing:
        raise DataError(
            f"the statistics hold no percentile(s) {', '.join(missing)} for data.clip "
            f"(available: {', '.join(table) or 'none'}); recompute them with "
            f"`acclimate stats SRC --clip {lo_p:g},{hi_p:g}`"
        )
    low = torch.tensor(table[_key(lo_p)], dtype=torch.float64)
    high = torch.tensor(table[_key(hi_p)], dtype=torch.float64)
    picked, _ = _sample(source, max_images, seed)
    c = source.channels
    view, nodata = keeping_missing(source), _nodata_of(source)
    count = torch.zeros(c, dtype=torch.float64)
    mean, m2 = torch.zeros(c, dtype=torch.float64), torch.zeros(c, dtype=torch.float64)
    readable = 0
    for i in picked.tolist():
        image = decode(view, i)
        if isinstance(image, BadItem):  # already reported by source_stats
            continue
        x = _pixels(image)
        ok = usable(x, nodata)  # nodata is left out, as in source_stats
        x = torch.maximum(torch.minimum(x, high[:, None]), low[:, None])
        count = _merge(mean, m2, count, x, ok)
        readable += 1
    if readable == 0:
        raise DataError(f"{source.name}: none of the {len(picked)} sampled images is readable")
    _check_counts(source, count)
    entry = {
        "percentiles": [lo_p, hi_p],
        "low": low.tolist(),
        "high": high.tolist(),
        "mean": mean.tolist(),
        "std": (m2 / count).sqrt().tolist(),
    }
    log.info(
        "clipped to percentiles %g-%g: mean %s, std %s",
        lo_p,
        hi_p,
        [round(m, 4) for m in entry["mean"]],
        [round(s, 4) for s in entry["std"]],
    )
    return {**stats, "clip": entry}


def channel_stats(
    source: ImageSource, max_images: int = 10_000, seed: int = 0
) -> tuple[list[float], list[float]]:
    """Per-channel mean and (population) std; see ``source_stats``."""
    stats = source_stats(source, max_images=max_images, seed=seed)
    return stats["mean"], stats["std"]


def save_stats(path: str | Path, stats: dict[str, Any]) -> Path:
    """Write statistics as JSON (atomically)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, stats)
    return path


def load_stats(path: str | Path, channels: int | None = None) -> dict[str, Any]:
    """Read a statistics file written by ``acclimate stats``; check its channel count."""
    path = Path(path)
    try:
        stats = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read statistics file {path}: {describe_error(exc)}") from exc
    if not isinstance(stats, dict) or "mean" not in stats or "std" not in stats:
        raise DataError(f"{path} is not a statistics file (run `acclimate stats SRC --out FILE`)")
    if channels is not None and len(stats["mean"]) != channels:
        raise DataError(
            f"{path} holds statistics for {len(stats['mean'])} channel(s) but the data has "
            f"{channels}: recompute them with `acclimate stats` and the same channels/bands"
        )
    return stats


def stats_key(
    spec: str | Path, split: str | None, channels: int, options: Any = None
) -> dict[str, Any]:
    """What statistics depend on: the source, the split, the channels and the read options."""
    if options is not None:  # how missing values are filled does not change the statistics
        options = {
            k: v
            for k, v in dataclasses.asdict(options).items()
            if k not in ("nodata_fill", "keep_missing")
        }
    return {
        "source": str(Path(spec).expanduser().absolute()),
        "split": split,
        "channels": channels,
        "options": None if options is None else json.loads(json.dumps(options)),
    }


def cached_stats_file(
    spec: str | Path, split: str | None, channels: int, options: Any = None
) -> Path | None:
    """Where ``acclimate stats`` leaves the statistics of a source for ``data.mean: auto``
    (``$ACCLIMATE_CACHE_DIR/stats/HASH.json``); None when the cache is off."""
    return key_file("stats", stats_key(spec, split, channels, options), ".json")
