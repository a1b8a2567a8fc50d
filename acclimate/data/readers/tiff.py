"""TIFF and GeoTIFF: any band count and pixel type through tifffile, with GDAL band names and
nodata; 8-bit gray/RGB TIFFs without band options take PIL's faster path."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import torch

from acclimate.data.readers.errors import BadImage, DataError, bad_reason, require
from acclimate.data.readers.options import DEFAULT_OPTIONS, ReadOptions, too_large
from acclimate.data.readers.pil import read_pil
from acclimate.data.readers.values import GDAL_NODATA_TAG, finish, parse_nodata

GDAL_METADATA_TAG = 42112
_GDAL_DESCRIPTION = re.compile(
    r'<Item[^>]*name="DESCRIPTION"[^>]*sample="(\d+)"[^>]*>([^<]*)</Item>'
)


def tiff_band_names(path: str | Path) -> list[str] | None:
    """Band names stored by GDAL (GDAL_METADATA tag 42112, DESCRIPTION items), or None."""
    tifffile = require("tifffile", "geo", "TIFF files")
    with tifffile.TiffFile(path) as tif:
        return _gdal_names(tif)


def _gdal_names(tif: object) -> list[str] | None:
    tag = tif.pages[0].tags.get(GDAL_METADATA_TAG)  # type: ignore[attr-defined]
    if tag is None:
        return None
    found = {int(s): name for s, name in _GDAL_DESCRIPTION.findall(str(tag.value))}
    return [found[k] for k in sorted(found)] if found else None


def _first_plane(array: np.ndarray, axes: str) -> np.ndarray:
    """A TIFF series as (bands, H, W): the first plane of stacks, the band axis first."""
    for a in "TZQI":  # stacks: keep the first plane
        while a in axes and array.ndim > 2:
            array = np.take(array, 0, axis=axes.index(a))
            axes = axes.replace(a, "", 1)
    if array.ndim == 2:
        return array[None]
    if array.ndim == 3:
        band_axis = next((axes.index(a) for a in "SC" if a in axes), 0)
        return np.moveaxis(array, band_axis, 0)
    raise BadImage("band_count", f"TIFF data of shape {array.shape} ({axes}) is not 2D")


def read_tifffile(
    path: str | Path, channels: int = 3, options: ReadOptions = DEFAULT_OPTIONS
) -> torch.Tensor:
    """Any band count and type, planar (bands, H, W) or interleaved (H, W, bands) storage."""
    tifffile = require("tifffile", "geo", f"{Path(path).name} (multi-band or 16-bit TIFF)")
    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        axes = series.axes
        shape = tuple(int(n) for n in series.shape)
        bands = next((shape[axes.index(a)] for a in "SC" if a in axes), 1)
        error = too_large(
            math.prod(shape) // max(bands, 1), " x ".join(map(str, shape)) + f" ({axes})", options
        )
        if error is not None:
            raise error
        array = series.asarray()
        names = _gdal_names(tif)
        tag = tif.pages[0].tags.get(GDAL_NODATA_TAG)
        file_nodata = None if tag is None else parse_nodata(tag.value)
    return finish(_first_plane(array, axes), channels, options, file_nodata, names)


def read_tiff(
    path: str | Path,
    channels: int = 3,
    options: ReadOptions = DEFAULT_OPTIONS,
    index: int | None = None,
) -> torch.Tensor:
    """A TIFF: PIL for plain gray/RGB reading, falling back to tifffile for what PIL cannot
    decode (e.g. a 4-band or float TIFF); tifffile whenever bands, a window or nodata are set.
    ``index`` (a volume slice) does not apply."""
    if not (options.plain and channels in (1, 3)):
        return read_tifffile(path, channels, options)
    try:
        return read_pil(path, channels, options)
    except (OSError, ValueError, SyntaxError) as exc:
        if isinstance(exc, DataError) or bad_reason(exc) != "unreadable":
            raise
        return read_tifffile(path, channels, options)
