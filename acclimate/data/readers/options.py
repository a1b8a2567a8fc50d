"""``ReadOptions``: how to read non-RGB data (bands, window, slices, nodata, pixel limit).

Every caller builds them here: the constructor takes the values as a recipe, a command line or
JSON gives them (lists, ints, floats) and stores them in one normal form (tuples, floats), and
``from_dict`` reads a recipe's ``data:`` keys or ``to_dict`` output, None meaning the default.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Literal

from acclimate.data.readers.errors import BadImage, DataError

# 8192 x 8192: a quarter of PIL's own error limit (2 x Image.MAX_IMAGE_PIXELS, about 179 M)
DEFAULT_MAX_PIXELS = 8192 * 8192


def _normal_fill(fill: Any) -> float | tuple[float, ...] | Literal["mean"]:
    """``mean``, a float or a tuple of floats; DataError unless ``mean`` or finite number(s)."""
    if fill == "mean":
        return "mean"
    values = tuple(fill) if isinstance(fill, (list, tuple)) else (fill,)
    if not values or not all(math.isfinite(float(v)) for v in values):
        raise DataError(f"nodata_fill must be 'mean' or finite number(s), got {fill!r}")
    floats = tuple(float(v) for v in values)
    return floats if isinstance(fill, (list, tuple)) else floats[0]


@dataclass(frozen=True)
class ReadOptions:
    """How to read non-RGB data (the ``data:`` keys of the same names).

    Args:
        bands: bands to keep, in this order: 0-based indices or names; None keeps all.
        band_names: names of the file's bands in order (e.g. Sentinel-2's B01..B12, B8A); None
            uses the GeoTIFF band descriptions when present.
        window: (centre, width) in raw or physical units (HU for CT); maps values to [0, 1].
        slice_axis: axis along which NIfTI volumes are cut into 2D slices (2 = axial for RAS).
        nodata: one more stored value that means "no data" (besides NaN, inf, |v| >= 3.4e38
            and the file's GDAL nodata tag); None: no other.
        nodata_fill: what missing values become, in the units the readers return: a number, one
            number per channel (training records its channel means here), or ``mean``: each
            image's own channel mean of the valid values.
        max_pixels: images declaring more pixels than this (width x height) are skipped.
        keep_missing: leave missing values as NaN instead of filling them (statistics).

    Sequences may be given as lists and numbers as ints; they are stored as tuples and floats.
    """

    bands: tuple[int | str, ...] | None = None
    band_names: tuple[str, ...] | None = None
    window: tuple[float, float] | None = None
    slice_axis: int = 2
    nodata: float | None = None
    nodata_fill: float | tuple[float, ...] | Literal["mean"] = "mean"
    max_pixels: int = DEFAULT_MAX_PIXELS
    keep_missing: bool = False

    def __post_init__(self) -> None:
        if self.window is not None and (len(self.window) != 2 or self.window[1] <= 1):
            raise DataError(f"window must be [centre, width] with width > 1, got {self.window}")
        if self.bands is not None and len(self.bands) == 0:
            raise DataError("bands is empty: list the bands to keep, or leave it out for all")
        if isinstance(self.max_pixels, bool) or int(self.max_pixels) < 1:
            raise DataError(f"max_pixels must be a positive pixel count, got {self.max_pixels}")
        normal = {
            "bands": None if self.bands is None else tuple(self.bands),
            "band_names": None if self.band_names is None else tuple(self.band_names),
            "window": None if self.window is None else tuple(float(v) for v in self.window),
            "slice_axis": int(self.slice_axis),
            "nodata": None if self.nodata is None else float(self.nodata),
            "nodata_fill": _normal_fill(self.nodata_fill),
            "max_pixels": int(self.max_pixels),
        }
        for name, value in normal.items():
            object.__setattr__(self, name, value)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> ReadOptions:
        """Rebuild from ``to_dict`` output or the ``data:`` keys of a recipe (missing or null
        keys take their defaults); other keys, and ``keep_missing``, are ignored."""
        d = d or {}
        names = [f.name for f in fields(cls) if f.name != "keep_missing"]
        return cls(**{k: d[k] for k in names if d.get(k) is not None})

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (lists), the inverse of ``from_dict`` (``keep_missing`` is left
        out: it is for statistics only)."""
        fill = self.nodata_fill
        return {
            "bands": None if self.bands is None else list(self.bands),
            "band_names": None if self.band_names is None else list(self.band_names),
            "window": None if self.window is None else list(self.window),
            "slice_axis": self.slice_axis,
            "nodata": self.nodata,
            "nodata_fill": list(fill) if isinstance(fill, tuple) else fill,
            "max_pixels": self.max_pixels,
        }

    @property
    def plain(self) -> bool:
        """True when nothing but 8-bit gray/RGB conversion is asked for."""
        return self.bands is None and self.window is None and self.nodata is None


DEFAULT_OPTIONS = ReadOptions()


def check_channels(channels: int) -> int:
    """Return ``channels`` if it is a positive band count, else raise DataError."""
    if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
        raise DataError(f"channels={channels} is not supported: give the band count (1, 3, 13...)")
    return channels


def too_large(pixels: int, what: str, options: ReadOptions) -> BadImage | None:
    """BadImage("too large") when ``pixels`` exceeds ``options.max_pixels``, else None."""
    if pixels <= options.max_pixels:
        return None
    return BadImage(
        "too large",
        f"{what} = {pixels:,} pixels, more than data.max_pixels = {options.max_pixels:,} "
        "(a decompression bomb or a huge scene): tile it, or raise data.max_pixels",
    )
