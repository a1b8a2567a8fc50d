"""PNG, JPEG, BMP, WebP and simple TIFF through PIL: 8-bit gray/RGB(A), 16-bit and float gray."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from acclimate.data.readers.errors import BadImage
from acclimate.data.readers.options import DEFAULT_OPTIONS, ReadOptions, too_large
from acclimate.data.readers.values import GDAL_NODATA_TAG, finish, parse_nodata, to_uint8_tensor

# PIL modes holding more than 8 bits per pixel in a single band.
_WIDE_GRAY_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})


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


def read_pil(
    path: str | Path,
    channels: int = 3,
    options: ReadOptions = DEFAULT_OPTIONS,
    index: int | None = None,
) -> torch.Tensor:
    """Decode with PIL into (channels, H, W): uint8 on the 8-bit path, else float32.
    ``index`` (a volume slice) does not apply to these formats."""
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
    return finish(array, channels, options, file_nodata)
