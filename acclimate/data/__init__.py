"""Data: image sources (folders, CSV manifests, .npz), readers, datasets and pixel statistics."""

from acclimate.data.dataset import ImageDataset, read_bad_file_log
from acclimate.data.readers import IMAGE_EXTENSIONS, DataError, read_image
from acclimate.data.sources import (
    FileSource,
    ImageSource,
    NpzSource,
    check_source,
    list_splits,
    open_source,
)
from acclimate.data.stats import channel_stats

__all__ = [
    "IMAGE_EXTENSIONS",
    "DataError",
    "FileSource",
    "ImageDataset",
    "ImageSource",
    "NpzSource",
    "channel_stats",
    "check_source",
    "list_splits",
    "open_source",
    "read_bad_file_log",
    "read_image",
]
