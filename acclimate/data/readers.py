"""Decode one image (a file, a volume slice or an array) into a tensor of shape (C, H, W).

Readers only decode; finding images and labels is the job of ``sources.py``. What comes back:

- **uint8** (C, H, W) for 8-bit images (PNG, JPEG, 8-bit TIFF): the fast path, unchanged values;
- **float32** (C, H, W) for everything else, in a documented range:

  - integer data wider than 8 bits (16-bit PNG/TIFF, Sentinel-2 uint16, ...): ``value / dtype max``,
    so uint16 maps to [0, 1] (a Sentinel-2 reflectance of 10000 becomes 0.1526);
  - float TIFF data: as stored;
  - DICOM: stored values -> physical units with RescaleSlope/RescaleIntercept, then the window
    (``window`` of the recipe, else the file's WindowCenter/WindowWidth, else the full stored bit
    range) maps them to [0, 1] (DICOM PS3.3 C.11.2.1.2, linear); MONOCHROME1 is inverted so that
    bright always means high signal;
  - NIfTI: the slice in physical units (``scl_slope``/``scl_inter`` applied), float32;
  - with ``window: [centre, width]`` in a recipe, any format's raw values go through that window
    to [0, 1] instead.

**Missing values (nodata).** A value is missing when it is NaN or +/-inf, when a float has
``|v| >= 3.4e38`` (GDAL's usual nodata, -3.4028235e38 = -FLT_MAX), when it equals the file's
GDAL nodata (TIFF tag 42113, GDAL_NODATA) or when it equals ``ReadOptions.nodata`` (the
recipe's ``data.nodata``); both are compared with the values as the file stores them. An image
with more than ``MAX_NODATA_FRACTION`` of its values missing is a bad item (reason ``nodata``);
otherwise the missing values are filled with ``ReadOptions.nodata_fill`` (per channel; ``mean``
before the training statistics are known: the image's own channel mean) and the image is float32.
Statistics read with ``keep_missing`` and get NaN instead, so nodata never enters a mean.

**Decompression bombs.** An image declaring more than ``ReadOptions.max_pixels`` pixels (width x
height, x the frames of a TIFF stack) is a bad item (reason ``too large``), checked from the
header before anything is decoded; so is one that PIL itself refuses as a decompression bomb.

``channels`` is the band count every image must end with: 1 and 3 convert (gray <-> RGB), any
other count must match the file's (selected) bands. ``ReadOptions.bands`` selects bands by index
(0-based) or by name (``band_names`` of the recipe, else the GeoTIFF's band descriptions).

Heavy readers are optional extras: ``pip install 'acclimate[geo]'`` (tifffile + imagecodecs) for
multi-band TIFF, ``pip install 'acclimate[medical]'`` (pydicom, nibabel) for DICOM and NIfTI.
"""

from __future__ import annotations

import importlib
import math
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Literal

import numpy as np
import torch
from PIL import Image

from acclimate.errors import AcclimateError

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".dcm", ".dicom", ".nii", ".nii.gz"}
)
TIFF_EXTENSIONS = frozenset({".tif", ".tiff"})
DICOM_EXTENSIONS = frozenset({".dcm", ".dicom"})
VOLUME_EXTENSIONS = frozenset({".nii", ".nii.gz"})

# PIL modes holding more than 8 bits per pixel in a single band.
_WIDE_GRAY_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})
_PIL_8BIT = frozenset({"L", "RGB"})

# Why an item was skipped; bad_files.txt and the run log count items per reason.
BAD_REASONS = (
    "missing",
    "unreadable",
    "truncated",
    "band_count",
    "dtype",
    "constant",
    "nodata",  # more than MAX_NODATA_FRACTION of the values are missing
    "too large",  # the header declares more than ReadOptions.max_pixels pixels
    "not finite",  # the features of the image are not finite (eval, embed)
)

# Floats at least this large in magnitude are nodata: GDAL writes -FLT_MAX (-3.4028235e38) into
# empty areas of float rasters; no measurement is that large.
NODATA_LIMIT = 3.4e38
MAX_NODATA_FRACTION = 0.5  # an image with more of its values missing is skipped ("nodata")
# 8192 x 8192: a quarter of PIL's own error limit (2 x Image.MAX_IMAGE_PIXELS, about 179 M)
DEFAULT_MAX_PIXELS = 8192 * 8192
GDAL_NODATA_TAG = 42113


class DataError(AcclimateError):
    """A data source is missing, empty, malformed or unreadable. The message names the path and
    the fix, on one line."""


class BadImage(DataError):
    """One item cannot be used; ``reason`` is one of ``BAD_REASONS``."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class MissingExtra(DataError):
    """An optional dependency is not installed; the message names the extra to install."""


def require(module: str, extra: str, what: str) -> ModuleType:
    """Import ``module`` or raise MissingExtra naming ``pip install 'acclimate[extra]'``."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtra(
            f"reading {what} needs the '{module}' package: pip install 'acclimate[{extra}]'"
        ) from None


def bad_reason(exc: BaseException) -> str:
    """The ``BAD_REASONS`` entry for an exception raised while decoding one item."""
    if isinstance(exc, BadImage):
        return exc.reason
    if isinstance(exc, FileNotFoundError):
        return "missing"
    if isinstance(exc, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return "too large"
    text = str(exc).lower()
    if isinstance(exc, EOFError) or any(
        w in text
        for w in ("truncated", "end of file", "unexpected eof", "not enough data", "failed to read")
    ):
        return "truncated"
    return "unreadable"


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
        fill = self.nodata_fill
        if fill != "mean":
            values = fill if isinstance(fill, tuple) else (fill,)
            if not values or not all(math.isfinite(float(v)) for v in values):  # type: ignore[arg-type]
                raise DataError(
                    f"nodata_fill must be 'mean' or finite number(s), got {self.nodata_fill!r}"
                )

    @classmethod
    def from_dict(cls, d: dict | None) -> ReadOptions:
        """Rebuild from ``to_dict`` output or the ``data:`` keys of a recipe (missing or null
        keys take their defaults); other keys are ignored."""
        d = d or {}
        bands, names, window = d.get("bands"), d.get("band_names"), d.get("window")
        fill = d.get("nodata_fill")
        if fill is None or fill == "mean":
            fill = "mean"
        elif isinstance(fill, (list, tuple)):
            fill = tuple(float(v) for v in fill)
        else:
            fill = float(fill)
        return cls(
            bands=None if bands is None else tuple(bands),
            band_names=None if names is None else tuple(names),
            window=None if window is None else (float(window[0]), float(window[1])),
            slice_axis=2 if d.get("slice_axis") is None else int(d["slice_axis"]),
            nodata=None if d.get("nodata") is None else float(d["nodata"]),
            nodata_fill=fill,
            max_pixels=DEFAULT_MAX_PIXELS if d.get("max_pixels") is None else int(d["max_pixels"]),
        )

    def to_dict(self) -> dict:
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


def extension(name: str | os.PathLike[str]) -> str:
    """Lower-case extension, with ``.nii.gz`` as one extension."""
    name = os.path.basename(os.fspath(name)).lower()
    if name.endswith(".nii.gz"):
        return ".nii.gz"
    return os.path.splitext(name)[1]


def is_image_file(name: str | os.PathLike[str]) -> bool:
    """True for a visible file name with a known image extension (case-insensitive)."""
    name = os.path.basename(os.fspath(name))
    return not name.startswith(".") and extension(name) in IMAGE_EXTENSIONS


def is_volume(name: str | os.PathLike[str]) -> bool:
    return extension(name) in VOLUME_EXTENSIONS


def describe_error(exc: BaseException) -> str:
    """``"OSError: image file is truncated"``: the exception on one line, for logs."""
    return " ".join(f"{type(exc).__name__}: {exc}".split())


def rgb_to_gray(rgb: np.ndarray) -> np.ndarray:
    """ITU-R 601-2 luma of a uint8 (..., 3) array, rounded exactly as PIL's ``convert("L")`` does,
    so that file and array sources give the same pixels. Returns uint8 (...)."""
    x = rgb.astype(np.uint32)
    luma = (x[..., 0] * 19595 + x[..., 1] * 38470 + x[..., 2] * 7471 + 0x8000) >> 16
    return luma.astype(np.uint8)


def to_uint8_tensor(array: np.ndarray, channels: int) -> torch.Tensor:
    """Convert a uint8 array (H, W), (H, W, 1) or (H, W, 3) to a uint8 tensor (channels, H, W).

    Grayscale becomes RGB by repeating the band; RGB becomes grayscale by ITU-R 601 luma.
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


# ----------------------------------------------------------------------------- value conversion


def apply_window(x: np.ndarray, centre: float, width: float) -> np.ndarray:
    """DICOM linear VOI window (PS3.3 C.11.2.1.2) to [0, 1]: float32, same shape."""
    y = (x.astype(np.float64) - (centre - 0.5)) / (width - 1) + 0.5
    return np.clip(y, 0.0, 1.0).astype(np.float32)


def _check_dtype(array: np.ndarray) -> None:
    if array.dtype.kind not in "uif" or array.dtype.itemsize > 8:
        raise BadImage("dtype", f"pixel type {array.dtype} is not supported (integer or float)")


def _scale(array: np.ndarray, window: tuple[float, float] | None) -> np.ndarray:
    """Raw (C, H, W) values -> uint8 (8-bit, no window) or float32 in the documented range."""
    _check_dtype(array)
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


def _mark_missing(scaled: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
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


def _select_bands(
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


def _to_channels(array: np.ndarray, channels: int) -> torch.Tensor:
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


# ----------------------------------------------------------------------------- formats


def too_large(pixels: int, what: str, options: ReadOptions) -> BadImage | None:
    """BadImage("too large") when ``pixels`` exceeds ``options.max_pixels``, else None."""
    if pixels <= options.max_pixels:
        return None
    return BadImage(
        "too large",
        f"{what} = {pixels:,} pixels, more than data.max_pixels = {options.max_pixels:,} "
        "(a decompression bomb or a huge scene): tile it, or raise data.max_pixels",
    )


def _open_pil(path: str | Path, options: ReadOptions) -> Image.Image:
    """Open (header only) with the pixel limit checked before anything is decoded."""
    with warnings.catch_warnings():
        # data.max_pixels decides; PIL's own warning (at Image.MAX_IMAGE_PIXELS) would only
        # repeat it, or contradict a limit raised on purpose
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = Image.open(path)
        except Image.DecompressionBombError as exc:
            raise BadImage(
                "too large", f"{exc} (PIL's limit, Image.MAX_IMAGE_PIXELS, applies too)"
            ) from None
    error = too_large(image.width * image.height, f"{image.width} x {image.height}", options)
    if error is not None:
        image.close()
        raise error
    return image


def _read_pil(path: str | Path, channels: int, options: ReadOptions) -> torch.Tensor:
    with _open_pil(path, options) as image:
        tags = getattr(image, "tag_v2", None)  # TIFF only
        tag = None if tags is None else tags.get(GDAL_NODATA_TAG)
        file_nodata = None if tag is None else parse_nodata(tag)
        if image.mode in _WIDE_GRAY_MODES:
            wide = np.asarray(image)
            if image.mode == "I":  # 16-bit PNGs decode as 32-bit "I" in some Pillow versions
                wide = wide.clip(0, 65535).astype(np.uint16)
            array = wide.astype(wide.dtype.newbyteorder("="))[None]
        elif image.mode == "F":
            array = np.asarray(image)[None]
        elif options.plain and channels in (1, 3) and file_nodata is None:  # the 8-bit fast path
            array = np.array(image.convert("L" if channels == 1 else "RGB"))  # writable copy
            return to_uint8_tensor(array, channels)
        else:
            if image.mode not in ("L", "RGB", "RGBA", "LA"):
                image = image.convert("RGBA" if "A" in image.mode else "RGB")
            array = np.asarray(image)
            array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
            if options.bands is None and channels == 3 and array.shape[0] == 4:
                array = array[:3]  # RGBA -> RGB as PIL's convert does
    array = _select_bands(array, None, options)
    mask = missing_values(array, file_nodata, options)
    out = _mark_missing(_scale(array, options.window), mask)
    return fill_missing(_to_channels(out, channels), options)


_GDAL_DESCRIPTION = re.compile(
    r'<Item[^>]*name="DESCRIPTION"[^>]*sample="(\d+)"[^>]*>([^<]*)</Item>'
)


def tiff_band_names(path: str | Path) -> list[str] | None:
    """Band names stored by GDAL (GDAL_METADATA tag 42112, DESCRIPTION items), or None."""
    tifffile = require("tifffile", "geo", "TIFF files")
    with tifffile.TiffFile(path) as tif:
        return _gdal_names(tif)


def _gdal_names(tif: object) -> list[str] | None:
    tag = tif.pages[0].tags.get(42112)  # type: ignore[attr-defined]
    if tag is None:
        return None
    found = {int(s): name for s, name in _GDAL_DESCRIPTION.findall(str(tag.value))}
    return [found[k] for k in sorted(found)] if found else None


def _read_tiff(path: str | Path, channels: int, options: ReadOptions) -> torch.Tensor:
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
    for a in "TZQI":  # stacks: keep the first plane
        while a in axes and array.ndim > 2:
            array = np.take(array, 0, axis=axes.index(a))
            axes = axes.replace(a, "", 1)
    if array.ndim == 2:
        array = array[None]
    elif array.ndim == 3:
        band_axis = next((axes.index(a) for a in "SC" if a in axes), 0)
        array = np.moveaxis(array, band_axis, 0)
    else:
        raise BadImage("band_count", f"TIFF data of shape {array.shape} ({axes}) is not 2D")
    array = _select_bands(array, names, options)
    mask = missing_values(array, file_nodata, options)
    out = _mark_missing(_scale(array, options.window), mask)
    return fill_missing(_to_channels(out, channels), options)


def _read_dicom(path: str | Path, channels: int, options: ReadOptions) -> torch.Tensor:
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
        array = _select_bands(np.moveaxis(pixels, -1, 0), None, options)
        mask = missing_values(array, None, options)
        out = _mark_missing(_scale(array, options.window), mask)
        return fill_missing(_to_channels(out, channels), options)
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
    return fill_missing(_to_channels(_mark_missing(out[None], mask), channels), options)


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


def nifti_slices(path: str | Path, axis: int) -> int:
    """Number of 2D slices of a NIfTI volume along ``axis`` (reads the header only)."""
    nib = require("nibabel", "medical", "NIfTI volumes")
    shape = nib.load(path).shape
    if len(shape) < 3:
        return 1
    if not 0 <= axis < 3:
        raise DataError(f"slice_axis must be 0, 1 or 2, got {axis}")
    return int(shape[axis])


def _read_nifti(
    path: str | Path, index: int | None, channels: int, options: ReadOptions
) -> torch.Tensor:
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
    _check_dtype(data)
    if data.ndim != 2:
        raise BadImage("band_count", f"NIfTI slice of shape {data.shape} is not 2D")
    mask = missing_values(data[None], None, options)
    if options.window is not None:
        data = apply_window(data, *options.window)
    else:
        data = np.nan_to_num(data.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    return fill_missing(_to_channels(_mark_missing(data[None], mask), channels), options)


def read_image(
    path: str | Path,
    channels: int = 3,
    options: ReadOptions = DEFAULT_OPTIONS,
    index: int | None = None,
) -> torch.Tensor:
    """Decode an image file into (channels, H, W): uint8 for 8-bit data, else float32.

    ``index`` is the slice of a volume (NIfTI). Missing values (nodata) are filled, see the
    module docstring. Raises BadImage (with a ``reason``) for wrong band counts and pixel types,
    mostly-nodata images and images declaring more than ``options.max_pixels`` pixels (before
    decoding), MissingExtra when an optional reader is not installed, and
    whatever the decoder raises on a missing, truncated or unidentifiable file; ``ImageDataset``
    turns those into skips.
    """
    ext = extension(path)
    if ext in VOLUME_EXTENSIONS:
        return _read_nifti(path, index, channels, options)
    if ext in DICOM_EXTENSIONS:
        return _read_dicom(path, channels, options)
    if ext in TIFF_EXTENSIONS and not (options.plain and channels in (1, 3)):
        return _read_tiff(path, channels, options)
    try:
        return _read_pil(path, channels, options)
    except (OSError, ValueError, SyntaxError) as exc:
        if ext not in TIFF_EXTENSIONS or isinstance(exc, DataError):
            raise
        if bad_reason(exc) != "unreadable":
            raise
        return _read_tiff(path, channels, options)  # e.g. a 4-band or float TIFF PIL cannot read
