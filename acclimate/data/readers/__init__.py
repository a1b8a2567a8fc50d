"""Decode one image (a file, a volume slice or an array) into a tensor of shape (C, H, W).

Readers only decode; finding images and labels is the job of ``acclimate.data.sources``. One
module per format (``pil``, ``tiff``, ``dicom``, ``nifti``; arrays: ``values.to_uint8_tensor``),
chosen by extension in ``dispatch.READERS``; what they share (scaling, nodata, bands, channels)
is in ``values``, the options in ``options`` and the exceptions in ``errors``. What comes back:

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

from acclimate.data.readers.dicom import read_dicom
from acclimate.data.readers.dispatch import (
    IMAGE_EXTENSIONS,
    READERS,
    VOLUME_EXTENSIONS,
    extension,
    is_image_file,
    is_volume,
    read_image,
)
from acclimate.data.readers.errors import (
    BAD_REASONS,
    BadImage,
    DataError,
    MissingExtra,
    bad_reason,
    describe_error,
    require,
)
from acclimate.data.readers.nifti import nifti_slices, read_nifti
from acclimate.data.readers.options import (
    DEFAULT_MAX_PIXELS,
    DEFAULT_OPTIONS,
    ReadOptions,
    check_channels,
    too_large,
)
from acclimate.data.readers.pil import read_pil
from acclimate.data.readers.tiff import read_tiff, tiff_band_names
from acclimate.data.readers.values import (
    MAX_NODATA_FRACTION,
    NODATA_LIMIT,
    apply_window,
    fill_missing,
    missing_values,
    parse_nodata,
    reject_constant,
    rgb_to_gray,
    to_uint8_tensor,
)

__all__ = [
    "BAD_REASONS",
    "DEFAULT_MAX_PIXELS",
    "DEFAULT_OPTIONS",
    "IMAGE_EXTENSIONS",
    "MAX_NODATA_FRACTION",
    "NODATA_LIMIT",
    "READERS",
    "VOLUME_EXTENSIONS",
    "BadImage",
    "DataError",
    "MissingExtra",
    "ReadOptions",
    "apply_window",
    "bad_reason",
    "check_channels",
    "describe_error",
    "extension",
    "fill_missing",
    "is_image_file",
    "is_volume",
    "missing_values",
    "nifti_slices",
    "parse_nodata",
    "read_dicom",
    "read_image",
    "read_nifti",
    "read_pil",
    "read_tiff",
    "reject_constant",
    "require",
    "rgb_to_gray",
    "tiff_band_names",
    "too_large",
    "to_uint8_tensor",
]
