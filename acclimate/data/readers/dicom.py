"""DICOM through pydicom: rescale slope/intercept to physical units, then a VOI window to [0, 1]
(DICOM PS3.3 C.11.2.1.2); MONOCHROME1 inverted; colour DICOM read as its samples."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from acclimate.data.readers.errors import BadImage, require
from acclimate.data.readers.options import DEFAULT_OPTIONS, ReadOptions, too_large
from acclimate.data.readers.values import (
    apply_window,
    fill_missing,
    finish,
    mark_missing,
    missing_values,
    to_channels,
)


def read_dicom(
    path: str | Path,
    channels: int = 3,
    options: ReadOptions = DEFAULT_OPTIONS,
    index: int | None = None,
) -> torch.Tensor:
    """Decode the first frame of a DICOM file into (channels, H, W) float32 in [0, 1] (colour
    DICOM: as stored, like other formats). ``index`` (a volume slice) does not apply."""
    pydicom = require("pydicom", "medical", "DICOM files")
    ds = pydicom.dcmread(path)
    if "PixelData" not in ds:
        raise BadImage("unreadable", "DICOM file holds no pixel data")
    rows, cols = int(getattr(ds, "Rows", 0) or 0), int(getattr(ds, "Columns", 0) or 0)
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    error = too_large(rows * cols * frames, f"{frames} frame(s) of {cols} x {rows}", options)
    if error is not None:
        raise error
    pixels = ds.pixel_array
    if int(getattr(ds, "SamplesPerPixel", 1)) > 1:  # colour DICOM (photos, ultrasound)
        if pixels.ndim == 4:
            pixels = pixels[0]
        return finish(np.moveaxis(pixels, -1, 0), channels, options)
    if pixels.ndim == 3:  # multi-frame: the first frame
        pixels = pixels[0]
    mask = missing_values(pixels[None], None, options)
    slope = float(getattr(ds, "RescaleSlope", 1) or 1)
    intercept = float(getattr(ds, "RescaleIntercept", 0) or 0)
    physical = pixels.astype(np.float64) * slope + intercept
    window = options.window or _dicom_window(ds, slope, intercept)
    out = apply_window(physical, *window)
    if str(getattr(ds, "PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        out = 1.0 - out
    return fill_missing(to_channels(mark_missing(out[None], mask), channels), options)


def _first(value: object) -> float:
    """A DICOM decimal string that may hold several values (e.g. two windows): the first."""
    try:
        return float(value)  # type: ignore[arg-type]
    except TypeError:
        return float(value[0])  # type: ignore[index]


def _dicom_window(ds: object, slope: float, intercept: float) -> tuple[float, float]:
    """The file's first WindowCenter/WindowWidth, else the full stored range in physical units."""
    centre, width = getattr(ds, "WindowCenter", None), getattr(ds, "WindowWidth", None)
    if centre is not None and width is not None and _first(width) > 1:
        return _first(centre), _first(width)
    bits = int(getattr(ds, "BitsStored", 16))
    signed = int(getattr(ds, "PixelRepresentation", 0)) == 1
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    lo, hi = sorted((lo * slope + intercept, hi * slope + intercept))
    return (lo + hi + 1) / 2, max(hi - lo + 1, 2.0)
