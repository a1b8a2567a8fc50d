"""NIfTI volumes through nibabel: one 2D slice at a time, in physical units (scl_slope and
scl_inter applied)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from acclimate.data.readers.errors import BadImage, DataError, require
from acclimate.data.readers.options import DEFAULT_OPTIONS, ReadOptions, too_large
from acclimate.data.readers.values import (
    apply_window,
    check_dtype,
    fill_missing,
    mark_missing,
    missing_values,
    to_channels,
)


def nifti_slices(path: str | Path, axis: int) -> int:
    """Number of 2D slices of a NIfTI volume along ``axis`` (reads the header only)."""
    nib = require("nibabel", "medical", "NIfTI volumes")
    shape = nib.load(path).shape
    if len(shape) < 3:
        return 1
    if not 0 <= axis < 3:
        raise DataError(f"slice_axis must be 0, 1 or 2, got {axis}")
    return int(shape[axis])


def read_nifti(
    path: str | Path,
    channels: int = 3,
    options: ReadOptions = DEFAULT_OPTIONS,
    index: int | None = None,
) -> torch.Tensor:
    """Slice ``index`` (None: 0) along ``options.slice_axis`` as (channels, H, W) float32;
    4D volumes (time, echoes) give their first volume."""
    nib = require("nibabel", "medical", "NIfTI volumes")
    image = nib.load(path)
    shape = image.shape
    plane = [n for k, n in enumerate(shape[:3]) if len(shape) == 2 or k != options.slice_axis]
    error = too_large(math.prod(plane), " x ".join(map(str, plane)) + " slice", options)
    if error is not None:
        raise error
    if len(shape) == 2:
        data = np.asarray(image.dataobj)
    else:
        where: list[int | slice] = [slice(None)] * len(shape)
        where[options.slice_axis] = 0 if index is None else index
        where[3:] = [0] * (len(shape) - 3)  # 4D (time, echoes): the first volume
        data = np.asarray(image.dataobj[tuple(where)])
    check_dtype(data)
    if data.ndim != 2:
        raise BadImage("band_count", f"NIfTI slice of shape {data.shape} is not 2D")
    mask = missing_values(data[None], None, options)
    if options.window is not None:
        data = apply_window(data, *options.window)
    else:
        data = np.nan_to_num(data.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    return fill_missing(to_channels(mark_missing(data[None], mask), channels), options)
