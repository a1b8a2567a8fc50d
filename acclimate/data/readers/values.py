"""From the values a file stores to what the readers return: scaling, windows, missing values
(nodata), band selection and channel conversion. Shared by every format's reader.

Arrays are (C, H, W) throughout; see ``acclimate.data.readers`` for the ranges returned.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from acclimate.data.readers.errors import BadImage, DataError
from acclimate.data.readers.options import DEFAULT_OPTIONS, ReadOptions

# Floats at least this large in magnitude are nodata: GDAL writes -FLT_MAX (-3.4028235e38) into
# empty areas of float rasters; no measurement is that large.
NODATA_LIMIT = 3.4e38
MAX_NODATA_FRACTION = 0.5  # an image with more of its values missing is skipped ("nodata")
GDAL_NODATA_TAG = 42113


def rgb_to_gray(rgb: np.ndarray) -> np.ndarray:
    """ITU-R 601-2 luma of a uint8 (..., 3) array, rounded exactly as PIL's ``convert("L")`` does,
    so that file and array sources give the same pixels. Returns uint8 (...)."""
    x = rgb.astype(np.uint32)
    luma = (x[..., 0] * 19595 + x[..., 1] * 38470 + x[..., 2] * 7471 + 0x8000) >> 16
    return luma.astype(np.uint8)


def to_uint8_tensor(array: np.ndarray, channels: int) -> torch.Tensor:
    """Convert a uint8 array (H, W), (H, W, 1) or (H, W, 3) to a uint8 tensor (channels, H, W).

    Grayscale becomes RGB by repeating the band; RGB becomes grayscale by ITU-R 601 luma.
    This is the reader of image arrays (``.npz`` sources).
    """
    if array.dtype != np.uint8:
        raise BadImage("dtype", f"expected a uint8 image array, got {array.dtype}")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if array.ndim == 2:
        gray = torch.from_numpy(np.ascontiguousarray(array))
        return gray.unsqueeze(0) if channels == 1 else gray.unsqueeze(0).repeat(channels, 1, 1)
    if array.ndim == 3 and array.shape[2] == 3 and channels in (1, 3):
        if channels == 1:
            return torch.from_numpy(rgb_to_gray(array)).unsqueeze(0)
        return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1).contiguous()
    if array.ndim == 3 and array.shape[2] == channels:
        return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))
    raise BadImage(
        "band_count", f"image array of shape {array.shape} does not give {channels} channel(s)"
    )


def reject_constant(image: torch.Tensor) -> torch.Tensor:
    """``image`` unchanged, or BadImage("constant") when every value is the same (blank tiles,
    no-data areas): such images teach an SSL method nothing and break per-image statistics."""
    flat = image.reshape(-1)
    if flat.numel() == 0 or bool((flat == flat[0]).all()):
        raise BadImage("constant", f"all {flat.numel()} values are equal (a blank image)")
    return image


def apply_window(x: np.ndarray, centre: float, width: float) -> np.ndarray:
    """DICOM linear VOI window (PS3.3 C.11.2.1.2) to [0, 1]: float32, same shape."""
    y = (x.astype(np.float64) - (centre - 0.5)) / (width - 1) + 0.5
    return np.clip(y, 0.0, 1.0).astype(np.float32)


def check_dtype(array: np.ndarray) -> None:
    """BadImage("dtype") unless ``array`` holds integers or floats of at most 64 bits."""
    if array.dtype.kind not in "uif" or array.dtype.itemsize > 8:
        raise BadImage("dtype", f"pixel type {array.dtype} is not supported (integer or float)")


def scale(array: np.ndarray, window: tuple[float, float] | None) -> np.ndarray:
    """Raw (C, H, W) values -> uint8 (8-bit, no window) or float32 in the documented range."""
    check_dtype(array)
    if window is not None:
        return apply_window(array, *window)
    if array.dtype == np.uint8:
        return array
    if array.dtype.kind in "ui":
        return (array.astype(np.float32) / np.float32(np.iinfo(array.dtype).max)).astype(np.float32)
    with np.errstate(over="ignore"):  # float64 beyond float32's range: nodata (inf) anyway
        return np.nan_to_num(array.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)


def parse_nodata(text: object) -> float | None:
    """A GDAL nodata tag value (ASCII, e.g. ``"-9999"``, ``"nan"``) as a float; None if empty
    or not a number."""
    if isinstance(text, bytes):
        text = text.decode("ascii", "ignore")
    try:
        return float(str(text).strip().strip("\x00"))
    except ValueError:
        return None


def _equal_to(array: np.ndarray, value: float) -> np.ndarray | None:
    """Where ``array`` holds ``value`` as its own dtype stores it; None when it cannot."""
    if math.isnan(value):
        return None  # NaN is missing in every float array anyway; integers hold none
    if array.dtype.kind in "ui":
        info = np.iinfo(array.dtype)
        if not float(value).is_integer() or not info.min <= value <= info.max:
            return None
        return array == array.dtype.type(int(value))
    if array.dtype.kind == "f":
        with np.errstate(over="ignore"):
            stored = np.array(value, dtype=array.dtype)  # as the file writes it (e.g. float32)
        return array == stored
    return None


def missing_values(
    array: np.ndarray, file_nodata: float | None, options: ReadOptions
) -> np.ndarray | None:
    """Mask (same shape as ``array``, raw stored values) of the missing values, None if none:
    non-finite or ``|v| >= NODATA_LIMIT`` floats, the file's nodata and ``options.nodata``."""
    mask = None
    if array.dtype.kind == "f":
        with np.errstate(invalid="ignore", over="ignore"):
            mask = ~np.isfinite(array) | (np.abs(array) >= NODATA_LIMIT)
    for value in (file_nodata, options.nodata):
        hit = None if value is None else _equal_to(array, value)
        if hit is not None:
            mask = hit if mask is None else mask | hit
    if mask is None or not mask.any():
        return None
    return mask


def mark_missing(scaled: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """Scaled (C, H, W) values with NaN where ``mask``; uint8 becomes float32 in [0, 1]."""
    if mask is None:
        return scaled
    out = scaled.astype(np.float32) / 255.0 if scaled.dtype == np.uint8 else scaled
    return np.where(mask, np.float32(np.nan), out).astype(np.float32)


def fill_missing(image: torch.Tensor, options: ReadOptions = DEFAULT_OPTIONS) -> torch.Tensor:
    """Fill the missing values (NaN) of a (C, H, W) image with ``options.nodata_fill``.

    Raises BadImage("nodata") when more than ``MAX_NODATA_FRACTION`` of the values are
    missing; with ``options.keep_missing`` the NaNs are kept (for statistics). Images without
    missing values (all uint8 ones) are returned as they are.
    """
    if not image.is_floating_point():
        return image
    missing = torch.isnan(image)
    n = int(missing.sum())
    if n == 0:
        return image
    fraction = n / image.numel()
    if fraction > MAX_NODATA_FRACTION:
        raise BadImage(
            "nodata",
            f"{fraction:.0%} of the {image.numel()} values are nodata (NaN, inf, |v| >= "
            f"{NODATA_LIMIT:g}, the file's GDAL nodata or data.nodata): too little left to use",
        )
    if options.keep_missing:
        return image
    c = image.shape[0]
    fill = options.nodata_fill
    if fill == "mean":
        valid = (~missing).sum(dim=(1, 2))
        total = torch.where(missing, 0.0, image).sum(dim=(1, 2))
        overall = float(total.sum() / valid.sum())
        values = torch.where(valid > 0, total / valid.clamp(min=1), overall)
    else:
        values = torch.as_tensor(fill if isinstance(fill, tuple) else (fill,) * c)
        if values.numel() != c:
            raise DataError(
                f"nodata_fill has {values.numel()} values but the image has {c} channel(s)"
            )
    values = values.to(image.dtype)[:, None, None].expand_as(image)
    return torch.where(missing, values, image)


def select_bands(
    array: np.ndarray, file_names: list[str] | None, options: ReadOptions
) -> np.ndarray:
    """(C, H, W) -> the selected bands, in the order asked for."""
    if options.bands is None:
        return array
    n = array.shape[0]
    names = list(options.band_names) if options.band_names is not None else file_names
    if names is not None and len(names) != n:
        raise BadImage("band_count", f"{n} bands but {len(names)} band names ({names})")
    index = []
    for b in options.bands:
        if isinstance(b, str):
            if names is None or b not in names:
                raise BadImage(
                    "band_count",
                    f"no band named {b!r}; the bands are {names or f'unnamed ({n})'}: "
                    "set data.band_names or select bands by index",
                )
            index.append(names.index(b))
        elif not -n <= b < n:
            raise BadImage("band_count", f"band {b} does not exist: the image has {n} bands")
        else:
            index.append(b)
    return array[index]


def to_channels(array: np.ndarray, channels: int) -> torch.Tensor:
    """(C, H, W) uint8/float32 -> tensor (channels, H, W); 1 <-> 3 convert, others must match."""
    c = array.shape[0]
    if c != channels:
        if c == 1 and channels == 3:
            array = np.repeat(array, 3, axis=0)
        elif c in (3, 4) and channels == 1:
            if array.dtype == np.uint8:
                array = rgb_to_gray(array[:3].transpose(1, 2, 0))[None]
            else:
                w = np.array([0.299, 0.587, 0.114], dtype=np.float32)[:, None, None]
                array = (array[:3] * w).sum(0, keepdims=True, dtype=np.float32)
        else:
            raise BadImage(
                "band_count",
                f"{c} band(s), expected {channels}: set data.channels, or data.bands to select",
            )
    return torch.from_numpy(np.ascontiguousarray(array))


def finish(
    array: np.ndarray,
    channels: int,
    options: ReadOptions,
    file_nodata: float | None = None,
    band_names: list[str] | None = None,
) -> torch.Tensor:
    """Raw (C, H, W) values as a file stores them -> the returned (channels, H, W) tensor:
    bands selected, missing values found, values scaled (or windowed), channels converted and
    missing values filled."""
    array = select_bands(array, band_names, options)
    mask = missing_values(array, file_nodata, options)
    out = mark_missing(scale(array, options.window), mask)
    return fill_missing(to_channels(out, channels), options)
