"""Data: image sources (folders, CSV, .npz; PNG/JPEG/TIFF/GeoTIFF/DICOM/NIfTI), readers, datasets,
transforms and pixel statistics."""

from acclimate.data.dataset import ImageDataset, read_bad_file_log
from acclimate.data.readers import (
    IMAGE_EXTENSIONS,
    BadImage,
    DataError,
    MissingExtra,
    ReadOptions,
    read_image,
)
from acclimate.data.sources import (
    FileSource,
    ImageSource,
    NpzSource,
    check_source,
    list_splits,
    open_source,
)
from acclimate.data.stats import channel_stats, load_stats, source_stats

__all__ = [
    "IMAGE_EXTENSIONS",
    "BadImage",
    "DataError",
    "MissingExtra",
    "ReadOptions",
    "FileSource",
    "ImageDataset",
    "ImageSource",
    "NpzSource",
    "channel_stats",
    "check_source",
    "list_splits",
    "load_stats",
    "open_source",
    "read_bad_file_log",
    "read_image",
    "source_stats",
]
