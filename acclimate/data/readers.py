"""Decode one image (a file or an array) into a uint8 tensor of shape (C, H, W).

Readers only decode; finding images and labels is the job of ``sources.py``. Every reader returns
``channels`` = 1 (grayscale) or 3 (RGB) so that a batch never mixes channel counts.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})

# PIL modes holding more than 8 bits per pixel in a single band.
_WIDE_GRAY_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})


class DataError(ValueError):
    """A data source is missing, empty, malformed or unreadable. The message names the path and
    the fix, on one line."""


def check_channels(channels: int) -> int:
    """Return ``channels`` if it is 1 or 3, else raise DataError."""
    if channels not in (1, 3):
        raise DataError(f"channels={channels} is not supported: use 1 (grayscale) or 3 (RGB)")
    return channels


def is_image_file(name: str | os.PathLike[str]) -> bool:
    """True for a visible file name with a known image extension (case-insensitive)."""
    name = os.path.basename(os.fspath(name))
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


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
        raise DataError(f"expected a uint8 image array, got {array.dtype}")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if array.ndim == 2:
        gray = torch.from_numpy(np.ascontiguousarray(array))
        return gray.unsqueeze(0) if channels == 1 else gray.unsqueeze(0).repeat(3, 1, 1)
    if array.ndim == 3 and array.shape[2] == 3:
        if channels == 1:
            return torch.from_numpy(rgb_to_gray(array)).unsqueeze(0)
        return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1).contiguous()
    raise DataError(f"expected an image array (H, W) or (H, W, 3), got shape {array.shape}")


def _wide_gray_to_8bit(image: Image.Image) -> np.ndarray:
    """Scale a 16-bit grayscale image (PIL 'I;16*' or 'I') to uint8 by ``round(v / 257)``.

    This maps the full 16-bit range linearly and ignores windowing; issue 5 extends the readers
    (bit depth, windowing, multi-band TIFF, DICOM).
    """
    wide = np.asarray(image).astype(np.int64).clip(0, 65535)
    return ((wide + 128) // 257).astype(np.uint8)


def read_image(path: str | Path, channels: int = 3) -> torch.Tensor:
    """Decode an image file with PIL into a uint8 tensor (channels, H, W).

    Raises whatever PIL raises on a missing, truncated or unidentifiable file (OSError and
    friends); ``ImageDataset`` turns those into skips.
    """
    with Image.open(path) as image:
        if image.mode in _WIDE_GRAY_MODES:
            return to_uint8_tensor(_wide_gray_to_8bit(image), channels)
        image = image.convert("L" if channels == 1 else "RGB")
        array = np.array(image)  # a writable copy: torch.from_numpy warns on read-only arrays
    return to_uint8_tensor(array, channels)
