"""Decode one image (a file, a volume slice or an array) into a tensor of shape (C, H, W).

Readers only decode; finding images and labels is the job of ``sources.py``. What comes back:

- **uint8** (C, H, W) for 8-bit images (PNG, JPEG, 8-bit TIFF): the fast path, unchanged values;
- **float32** (C, H, W) for everything else, in a documented range:

  - integer data wider than 8 bits (16-bit PNG/TIFF, Sentinel-2 uint16, ...): ``value / dtype max``,
    so uint16 maps to [0, 1] (a Sentinel-2 reflectance of 10000 becomes 0.1526);
  - float TIFF data: as stored (NaN becomes 0);
  - DICOM: stored values -> physical units with RescaleSlope/RescaleIntercept, then the window
    (``window`` of the recipe, else the file's WindowCenter/WindowWidth, else the full stored bit
    range) maps them to [0, 1] (DICOM PS3.3 C.11.2.1.2, linear); MONOCHROME1 is inverted so that
    bright always means high signal;
  - NIfTI: the slice in physical units (``scl_slope``/``scl_inter`` applied), float32;
  - with ``window: [centre, width]`` in a recipe, any format's raw values go through that window
    to [0, 1] instead.

``channels`` is the band count every image must end with: 1 and 3 convert (gray <-> RGB), any
other count must match the file's (selected) bands. ``ReadOptions.bands`` selects bands by index
(0-based) or by name (``band_names`` of the recipe, else the GeoTIFF's band descriptions).

Heavy readers are optional extras: ``pip install 'acclimate[geo]'`` (tifffile + imagecodecs) for
multi-band TIFF, ``pip install 'acclimate[medical]'`` (pydicom, nibabel) for DICOM and NIfTI.
"""

from __future__ import annotations

import importlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

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
BAD_REASONS = ("missing", "unreadable", "truncated", "band_count", "dtype", "constant")


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
    """

    bands: tuple[int | str, ...] | None = None
    band_names: tuple[str, ...] | None = None
    window: tuple[float, float] | None = None
    slice_axis: int = 2

    def __post_init__(self) -> None:
        if self.window is not None and (len(self.window) != 2 or self.window[1] <= 1):
            raise DataError(f"window must be [centre, width] with width > 1, got {self.window}")
        if self.bands is not None and len(self.bands) == 0:
            raise DataError("bands is empty: list the bands to keep, or leave it out for all")

    @classmethod
    def from_dict(cls, d: dict | None) -> ReadOptions:
        """Rebuild from ``to_dict`` output or the ``data:`` keys of a recipe (missing or null
        keys take their defaults); other keys are ignored."""
        d = d or {}
        bands, names, window = d.get("bands"), d.get("band_names"), d.get("window")
        return cls(
            bands=None if bands is None else tuple(bands),
            band_names=None if names is None else tuple(names),
            window=None if window is None else (float(window[0]), float(window[1])),
            slice_axis=2 if d.get("slice_axis") is None else int(d["slice_axis"]),
        )

    def to_dict(self) -> dict:
        """JSON-ready form (lists), the inverse of ``from_dict``."""
        return {
            "bands": None if self.bands is None else list(self.bands),
            "band_names": None if self.band_names is None else list(self.band_names),
            "window": None if self.window is None else list(self.window),
            "slice_axis": self.slice_axis,
        }

    @property
    def plain(self) -> bool:
        """True when nothing but 8-bit gray/RGB conversion is asked for."""
        return self.bands is None and self.window is None


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
    return np.nan_to_num(array.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)


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


def _read_pil(path: str | Path, channels: int, options: ReadOptions) -> torch.Tensor:
    with Image.open(path) as image:
        if image.mode in _WIDE_GRAY_MODES:
            wide = np.asarray(image)
            if image.mode == "I":  # 16-bit PNGs decode as 32-bit "I" in some Pillow versions
                wide = wide.clip(0, 65535).astype(np.uint16)
            array = wide.astype(wide.dtype.newbyteorder("="))[None]
        elif image.mode == "F":
            array = np.asarray(image)[None]
        elif options.plain and channels in (1, 3):  # the 8-bit fast path
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
    return _to_channels(_scale(array, options.window), channels)


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
        array = series.asarray()
        names = _gdal_names(tif)
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
    return _to_channels(_scale(array, options.window), channels)


def _read_dicom(path: str | Path, channels: int, options: ReadOptions) -> torch.Tensor:
    pydicom = require("pydicom", "medical", "DICOM files")
    ds = pydicom.dcmread(path)
    if "PixelData" not in ds:
        raise BadImage("unreadable", "DICOM file holds no pixel data")
    pixels = ds.pixel_array
    if int(getattr(ds, "SamplesPerPixel", 1)) > 1:  # colour DICOM (photos, ultrasound)
        if pixels.ndim == 4:
            pixels = pixels[0]
        array = _select_bands(np.moveaxis(pixels, -1, 0), None, options)
        return _to_channels(_scale(array, options.window), channels)
    if pixels.ndim == 3:  # multi-frame: the first frame
        pixels = pixels[0]
    slope = float(getattr(ds, "RescaleSlope", 1) or 1)
    intercept = float(getattr(ds, "RescaleIntercept", 0) or 0)
    physical = pixels.astype(np.float64) * slope + intercept
    window = options.window or _dicom_window(ds, slope, intercept)
    out = apply_window(physical, *window)
    if str(getattr(ds, "PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        out = 1.0 - out
    return _to_channels(out[None], channels)


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
    if options.window is not None:
        data = apply_window(data, *options.window)
    else:
        data = np.nan_to_num(data.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    return _to_channels(data[None], channels)


def read_image(
    path: str | Path,
    channels: int = 3,
    options: ReadOptions = DEFAULT_OPTIONS,
    index: int | None = None,
) -> torch.Tensor:
    """Decode an image file into (channels, H, W): uint8 for 8-bit data, else float32.

    ``index`` is the slice of a volume (NIfTI). Raises BadImage (with a ``reason``) for wrong
    band counts and pixel types, MissingExtra when an optional reader is not installed, and
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
