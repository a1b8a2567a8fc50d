"""Image sources: find the images (and labels) behind a path, and check them before training.

``open_source(spec)`` detects the kind from the path (``detect``):

- a folder whose subfolders are classes (``ROOT/CLASS/*.jpg``), optionally under split folders
  (``ROOT/train/CLASS/``, ``ROOT/val/`` or ``valid/`` or ``validation/``, ``ROOT/test/``), or a
  flat folder of images (unlabelled), possibly as one split of a split layout (``folder``);
- a CSV manifest with a path column and optional label, class name and split columns
  (``manifest``);
- a MedMNIST-style ``.npz`` (``train_images``, ``train_labels``, ``val_…``, ``test_…``; ``npz``).

Every source gives (channels, H, W) tensors, uint8 for 8-bit images and float32 otherwise (see
``acclimate.data.readers``); labels are int64 with -1 for unlabelled items (``base``). NIfTI
volumes become one item per slice. Large folder and CSV indexes are cached between runs
(``acclimate.data.index_cache``). ``check_source`` (``check``) decodes a sample before training.
"""

from acclimate.data.paths import PathArray
from acclimate.data.readers import DataError
from acclimate.data.sources.base import FileSource, ImageSource, expand_volumes
from acclimate.data.sources.check import check_source
from acclimate.data.sources.detect import list_splits, open_source
from acclimate.data.sources.npz import NpzSource
from acclimate.data.sources.splits import EXPECTED, SPLIT_ALIASES, SPLIT_ORDER, canonical_split

__all__ = [
    "EXPECTED",
    "SPLIT_ALIASES",
    "SPLIT_ORDER",
    "DataError",
    "FileSource",
    "ImageSource",
    "NpzSource",
    "PathArray",
    "canonical_split",
    "check_source",
    "expand_volumes",
    "list_splits",
    "open_source",
]
