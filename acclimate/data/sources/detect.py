"""Open a data source from a path alone: the kind (folder, ``.csv``, ``.npz``) is detected."""

from __future__ import annotations

from pathlib import Path

from acclimate.data.readers import DEFAULT_OPTIONS, DataError, ReadOptions, check_channels
from acclimate.data.sources.base import ImageSource, expand_volumes
from acclimate.data.sources.folder import folder_source, folder_splits
from acclimate.data.sources.manifest import csv_source, csv_splits
from acclimate.data.sources.npz import npz_source, npz_splits
from acclimate.data.sources.splits import EXPECTED, canonical_split


def _resolve(spec: str | Path) -> Path:
    path = Path(spec).expanduser().absolute()  # absolute paths in logs, whatever the cwd later
    if not path.exists():
        raise DataError(f"data source {path} does not exist: {EXPECTED}")
    return path


def open_source(
    spec: str | Path,
    split: str | None = None,
    channels: int = 3,
    options: ReadOptions = DEFAULT_OPTIONS,
) -> ImageSource:
    """Open the images behind ``spec`` (a folder, a ``.csv`` manifest or a ``.npz``).

    ``split`` picks one split (``train``, ``val``/``valid``/``validation``, ``test``); None takes
    every split together. Images are converted to ``channels`` (1 = grayscale, 3 = RGB, other
    counts must match the selected bands); ``options`` selects bands, windows and slice axes.
    """
    check_channels(channels)
    if options.bands is not None and len(options.bands) != channels:
        raise DataError(
            f"bands lists {len(options.bands)} bands but channels is {channels}: make them agree"
        )
    path = _resolve(spec)
    split = None if split is None else canonical_split(split)
    if path.is_dir():
        source = folder_source(path, split, channels)
    elif path.suffix.lower() == ".csv":
        source = csv_source(path, split, channels)
    elif path.suffix.lower() == ".npz":
        return npz_source(path, split, channels)
    else:
        raise DataError(f"cannot open {path} as a data source: {EXPECTED}")
    source.options = options
    return expand_volumes(source)


def list_splits(spec: str | Path) -> list[str]:
    """Canonical split names present in ``spec`` (e.g. ["train", "val", "test"]); [] if none."""
    path = _resolve(spec)
    if path.is_dir():
        return folder_splits(path)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return csv_splits(path)
    if suffix == ".npz":
        return npz_splits(path)
    raise DataError(f"cannot open {path} as a data source: {EXPECTED}")
