"""Which reader decodes which file: the table from extension to reader, and ``read_image``."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch

from acclimate.data.readers.dicom import read_dicom
from acclimate.data.readers.nifti import read_nifti
from acclimate.data.readers.options import DEFAULT_OPTIONS, ReadOptions
from acclimate.data.readers.pil import read_pil
from acclimate.data.readers.tiff import read_tiff

# (path, channels, options, slice index) -> (channels, H, W) uint8 or float32
Reader = Callable[[str | Path, int, ReadOptions, int | None], torch.Tensor]

READERS: dict[str, Reader] = {
    ".jpg": read_pil,
    ".jpeg": read_pil,
    ".png": read_pil,
    ".bmp": read_pil,
    ".webp": read_pil,
    ".tif": read_tiff,
    ".tiff": read_tiff,
    ".dcm": read_dicom,
    ".dicom": read_dicom,
    ".nii": read_nifti,
    ".nii.gz": read_nifti,
}
IMAGE_EXTENSIONS = frozenset(READERS)
VOLUME_EXTENSIONS = frozenset(e for e, r in READERS.items() if r is read_nifti)


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
    """True for a volume file (NIfTI), which a source lists once per slice."""
    return extension(name) in VOLUME_EXTENSIONS


def read_image(
    path: str | Path,
    channels: int = 3,
    options: ReadOptions = DEFAULT_OPTIONS,
    index: int | None = None,
) -> torch.Tensor:
    """Decode an image file into (channels, H, W): uint8 for 8-bit data, else float32.

    The reader is chosen by extension (``READERS``; PIL for any other). ``index`` is the slice
    of a volume (NIfTI). Missing values (nodata) are filled, see ``acclimate.data.readers``.
    Raises BadImage (with a ``reason``) for wrong band counts and pixel types, mostly-nodata
    images and images declaring more than ``options.max_pixels`` pixels (before decoding),
    MissingExtra when an optional reader is not installed, and whatever the decoder raises on
    a missing, truncated or unidentifiable file; ``ImageDataset`` turns those into skips.
    """
    reader = READERS.get(extension(path), read_pil)
    return reader(path, channels, options, index)
