"""Image sources: find the images (and labels) behind a path, and check them before training.

``open_source(spec)`` detects the kind from the path (DESIGN.md, "Data sources"):

- a folder whose subfolders are classes (``ROOT/CLASS/*.jpg``), optionally under split folders
  (``ROOT/train/CLASS/``, ``ROOT/val/`` or ``valid/`` or ``validation/``, ``ROOT/test/``);
- a flat folder of images (unlabelled), possibly as one split of a split layout;
- a CSV manifest with a path column and optional label, class name and split columns;
- a MedMNIST-style ``.npz`` (``train_images``, ``train_labels``, ``val_…``, ``test_…``).

Every source gives (channels, H, W) tensors, uint8 for 8-bit images and float32 otherwise (see
``readers.py``); labels are int64 with -1 for unlabelled items. NIfTI volumes become one item per
slice. Large folder and CSV indexes are cached between runs (``index_cache.py``).
"""

from __future__ import annotations

import csv
import logging
import operator
import os
import zipfile
from array import array
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch

from acclimate.data import index_cache
from acclimate.data.readers import (
    DEFAULT_OPTIONS,
    DataError,
    MissingExtra,
    ReadOptions,
    bad_reason,
    check_channels,
    describe_error,
    is_image_file,
    is_volume,
    nifti_slices,
    read_image,
    reject_constant,
    to_uint8_tensor,
)

log = logging.getLogger(__name__)

SPLIT_ALIASES = {
    "train": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
}
SPLIT_ORDER = ("train", "val", "test")
EXPECTED = (
    "expected class subfolders with images, a flat folder of images, a .csv manifest or a .npz"
)

_IGNORED_DIRS = frozenset({"__MACOSX"})
_CSV_PATH_COLUMNS = ("path", "file", "filename", "image")


def canonical_split(name: str) -> str:
    """``valid`` and ``validation`` -> ``val``; other names lower-cased and kept."""
    key = name.strip().lower()
    return SPLIT_ALIASES.get(key, key)


def _ordered_splits(names: Iterable[str]) -> list[str]:
    names = set(names)
    return [s for s in SPLIT_ORDER if s in names] + sorted(names - set(SPLIT_ORDER))


def _missing_split(where: object, split: str, present: Sequence[str]) -> DataError:
    if not present:
        return DataError(
            f"{where} has no splits, so split={split!r} cannot be chosen: "
            "pass no split to use all of it, or point at a source with splits"
        )
    return DataError(f"{where} has no split {split!r}: the splits present are {', '.join(present)}")


def _with_split(name: str, split: str | None, splits: Sequence[str]) -> str:
    if split is not None:
        return f"{name} (split {split})"
    return f"{name} (splits {'+'.join(splits)})" if splits else name


class _PathArray:
    """Strings packed in one bytes buffer plus int64 offsets.

    Cheap to pickle into DataLoader workers, and no per-item Python objects whose reference
    counts would make forked workers copy the list page by page (pytorch/pytorch#13246).
    """

    def __init__(self, paths: Iterable[str]) -> None:
        buffer = bytearray()  # grown in place: no list of a million bytes objects
        ends = array("q")
        for p in paths:
            buffer += os.fsencode(p)
            ends.append(len(buffer))
        self._buffer = bytes(buffer)
        self._offsets = np.zeros(len(ends) + 1, dtype=np.int64)
        self._offsets[1:] = np.frombuffer(ends, dtype=np.int64) if ends else []

    @classmethod
    def from_buffer(cls, buffer: bytes, offsets: np.ndarray) -> _PathArray:
        self = cls.__new__(cls)
        self._buffer, self._offsets = buffer, np.asarray(offsets, dtype=np.int64)
        return self

    def may_hold(self, text: str) -> bool:
        """False when no path contains ``text`` (a fast scan of the packed bytes)."""
        return os.fsencode(text) in self._buffer.lower()

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, i: int) -> str:
        i = range(len(self))[operator.index(i)]
        return os.fsdecode(self._buffer[self._offsets[i] : self._offsets[i + 1]])


class ImageSource:
    """An indexed collection of images with optional labels.

    Images are returned as (C, H, W) tensors with C = ``channels``, uint8 for 8-bit data and
    float32 otherwise (``readers.py`` documents the ranges);
    ``labels`` is int64 (N,) with -1 for unlabelled items, indexing into ``classes``.
    """

    def __init__(self, name: str, classes: Sequence[str], labels: np.ndarray, channels: int):
        self.name = name
        self.classes = list(classes)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.channels = check_channels(channels)

    def __len__(self) -> int:
        return len(self.labels)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.name}: {len(self)} images, "
            f"{len(self.classes)} classes, {self.channels} channel(s))"
        )

    @property
    def has_labels(self) -> bool:
        """True when the source names classes and at least one item has a label."""
        return bool(self.classes) and bool((self.labels >= 0).any())

    def load(self, i: int) -> torch.Tensor:
        """Decode item ``i`` as (channels, H, W) uint8 or float32; raises on a bad file."""
        raise NotImplementedError

    def describe(self, i: int) -> str:
        """Where item ``i`` comes from (a path), for logs and error messages."""
        raise NotImplementedError

    def subset(self, indices: Sequence[int]) -> ImageSource:
        """A source holding the given items, in the given order, with the same classes."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < -len(self) or idx.max() >= len(self)):
            raise IndexError(f"subset indices out of range for {self.name} ({len(self)} items)")
        idx = idx % max(len(self), 1)
        return self._subset(idx, f"{self.name} [subset of {len(idx)}]")

    def _subset(self, idx: np.ndarray, name: str) -> ImageSource:
        raise NotImplementedError


class FileSource(ImageSource):
    """Image files on disk (folders and CSV manifests): PIL, tifffile, pydicom or nibabel.

    ``slices`` (int32, one per item, -1 for 2D files) is the slice of a volume file; a volume's
    path repeats once per slice.
    """

    def __init__(
        self,
        name: str,
        paths: Sequence[str],
        labels: np.ndarray,
        classes: Sequence[str],
        channels: int = 3,
        options: ReadOptions = DEFAULT_OPTIONS,
        slices: np.ndarray | None = None,
    ) -> None:
        super().__init__(name, classes, labels, channels)
        self.paths = paths if isinstance(paths, _PathArray) else _PathArray(paths)
        self.options = options
        self.slices = None if slices is None else np.asarray(slices, dtype=np.int32)
        if len(self.paths) != len(self.labels):
            raise ValueError(f"{len(self.paths)} paths but {len(self.labels)} labels")

    def _slice(self, i: int) -> int | None:
        if self.slices is None or self.slices[i] < 0:
            return None
        return int(self.slices[i])

    def load(self, i: int) -> torch.Tensor:
        return read_image(self.paths[i], self.channels, self.options, self._slice(i))

    def describe(self, i: int) -> str:
        k = self._slice(i)
        return self.paths[i] if k is None else f"{self.paths[i]}[slice {k}]"

    def _subset(self, idx: np.ndarray, name: str) -> FileSource:
        paths = _PathArray(self.paths[int(i)] for i in idx)
        slices = None if self.slices is None else self.slices[idx]
        return FileSource(
            name, paths, self.labels[idx], self.classes, self.channels, self.options, slices
        )


def _expand_volumes(source: FileSource) -> FileSource:
    """One item per slice of every NIfTI volume (2D files stay one item); headers only."""
    if not source.paths.may_hold(".nii"):
        return source
    paths: list[str] = []
    labels: list[int] = []
    slices: list[int] = []
    for i in range(len(source)):
        path, label = source.paths[i], int(source.labels[i])
        try:
            n = nifti_slices(path, source.options.slice_axis) if is_volume(path) else 0
        except MissingExtra:
            raise
        except Exception as exc:  # unreadable header: one item, reported when loaded
            log.warning("%s: cannot read the volume header (%s)", path, describe_error(exc))
            n = 0
        k = range(n) if n else [-1]
        paths += [path] * len(k)
        labels += [label] * len(k)
        slices += list(k)
    return FileSource(
        source.name,
        paths,
        np.array(labels, dtype=np.int64),
        source.classes,
        source.channels,
        source.options,
        np.array(slices, dtype=np.int32),
    )


class NpzSource(ImageSource):
    """Image arrays in a ``.npz`` file: item i is row ``rows[i]`` of array ``keys[key_ids[i]]``.

    Arrays are loaded on first use, once per process, and are not pickled: a DataLoader worker
    started by spawn loads them itself.
    """

    def __init__(
        self,
        name: str,
        path: str | Path,
        keys: Sequence[str],
        key_ids: np.ndarray,
        rows: np.ndarray,
        labels: np.ndarray,
        classes: Sequence[str],
        channels: int = 3,
    ) -> None:
        super().__init__(name, classes, labels, channels)
        self.path = Path(path)
        self.keys = list(keys)
        self.key_ids = np.asarray(key_ids, dtype=np.int64)
        self.rows = np.asarray(rows, dtype=np.int64)
        self._arrays: dict[str, np.ndarray] = {}

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_arrays": {}}

    def _array(self, key: str) -> np.ndarray:
        if key not in self._arrays:
            with np.load(self.path, allow_pickle=False) as npz:
                self._arrays[key] = npz[key]
        return self._arrays[key]

    def load(self, i: int) -> torch.Tensor:
        return to_uint8_tensor(self._array(self.keys[self.key_ids[i]])[self.rows[i]], self.channels)

    def describe(self, i: int) -> str:
        return f"{self.path}[{self.keys[self.key_ids[i]]}][{self.rows[i]}]"

    def _subset(self, idx: np.ndarray, name: str) -> NpzSource:
        sub = NpzSource(
            name,
            self.path,
            self.keys,
            self.key_ids[idx],
            self.rows[idx],
            self.labels[idx],
            self.classes,
            self.channels,
        )
        sub._arrays = self._arrays  # share what this process has already loaded
        return sub


# ----------------------------------------------------------------------------- folders


def _scan_dir(path: Path) -> tuple[list[str], list[str]]:
    """(image file names, subfolder names) directly in ``path``, sorted, hidden ones left out.

    Every folder scanned is recorded for the index cache (its mtime changes when entries are
    added, removed or renamed in it)."""
    index_cache.record(path)
    files, dirs = [], []
    with os.scandir(path) as entries:
        for entry in entries:
            if entry.name.startswith(".") or entry.name in _IGNORED_DIRS:
                continue
            if entry.is_dir():
                dirs.append(entry.name)
            elif is_image_file(entry.name) and entry.is_file():
                files.append(entry.name)
    return sorted(files), sorted(dirs)


def _images_under(path: Path) -> list[str]:
    """Image paths under ``path`` at any depth, in sorted order."""
    files, dirs = _scan_dir(path)
    found = [os.path.join(path, f) for f in files]
    for d in dirs:
        found += _images_under(path / d)
    return found


def _split_dirs(root: Path) -> dict[str, str]:
    """Canonical split name -> folder name when ``root`` is laid out in split folders, else {}."""
    _, dirs = _scan_dir(root)
    found: dict[str, str] = {}
    for d in dirs:
        split = SPLIT_ALIASES.get(d.lower())
        if split is None:
            continue
        if split in found:
            raise DataError(
                f"{root} has both {found[split]}/ and {d}/ as the {split} split: "
                "merge or rename one"
            )
        found[split] = d
    others = [d for d in dirs if d.lower() not in SPLIT_ALIASES]
    if found and others:
        if not any(_scan_dir(root / d)[1] for d in found.values()):
            return {}  # class folders that happen to be called e.g. "test"
        if ignored := [d for d in others if _images_under(root / d)]:
            log.warning(
                "%s: ignoring images in %s beside the split folders", root, ", ".join(ignored)
            )
    return found


def _scan_layout(folder: Path) -> tuple[list[str], dict[str, list[str]]]:
    """(loose image paths, {class name: image paths}) of one folder (the root or a split)."""
    files, dirs = _scan_dir(folder)
    by_class = {d: images for d in dirs if (images := _images_under(folder / d))}
    loose = [os.path.join(folder, f) for f in files]
    if by_class and loose:
        log.warning(
            "%s: ignoring %d images beside the class folders (e.g. %s)",
            folder,
            len(loose),
            loose[0],
        )
        loose = []
    return loose, by_class


def _folder_source(root: Path, split: str | None, channels: int) -> FileSource:
    key = {"kind": "folder", "root": str(root), "split": split}
    return index_cache.cached(key, lambda: _scan_folder_source(root, split, channels), channels)


def _scan_folder_source(root: Path, split: str | None, channels: int) -> FileSource:
    splits = _split_dirs(root)
    present = _ordered_splits(splits)
    if split is not None and split not in splits:
        raise _missing_split(root, split, present)
    folders = [root / splits[s] for s in present] if splits else [root]
    layouts = {folder: _scan_layout(folder) for folder in folders}
    classes = sorted({c for _, by_class in layouts.values() for c in by_class})
    class_index = {c: k for k, c in enumerate(classes)}

    paths: list[str] = []
    labels: list[int] = []
    for folder in [root / splits[split]] if split is not None else folders:
        loose, by_class = layouts[folder]
        paths += loose
        labels += [-1] * len(loose)
        for name, images in by_class.items():
            paths += images
            labels += [class_index[name]] * len(images)
    if not paths:
        where = root / splits[split] if split is not None else root
        raise DataError(f"no images found in {where}: {EXPECTED}")
    name = _with_split(f"folder {root}", split, present)
    return FileSource(name, paths, np.array(labels, dtype=np.int64), classes, channels)


# ----------------------------------------------------------------------------- CSV manifests


def _read_csv(path: Path) -> tuple[dict[str, str], list[dict[str, str | None]]]:
    """(lower-cased column name -> column name as written, rows)."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            header = reader.fieldnames or []
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"cannot read CSV manifest {path}: {describe_error(exc)}") from exc
    return {h.strip().lower(): h for h in header if h is not None}, rows


def _parse_label(csv_path: Path, row: int, value: str) -> int:
    """An integer label cell; empty or negative means unlabelled (-1)."""
    if not value:
        return -1
    try:
        number = float(value)
        if not number.is_integer():
            raise ValueError
    except ValueError:
        raise DataError(
            f"{csv_path} row {row}: label {value!r} is not an integer; use the "
            "class_name column for class names"
        ) from None
    return max(int(number), -1)


def _csv_labels(
    csv_path: Path, n: int, ids: list[int] | None, names: list[str] | None
) -> tuple[list[str], np.ndarray]:
    """Classes and labels from an integer ``label`` column, a ``class_name`` column or both."""
    if names is None:
        if ids is None or max(ids, default=-1) < 0:
            return [], np.full(n, -1, dtype=np.int64)
        return [str(k) for k in range(max(ids) + 1)], np.array(ids, dtype=np.int64)
    classes = sorted({n for n in names if n})
    index = {c: k for k, c in enumerate(classes)}
    if ids is not None:  # both columns: class_name gives the names, label must agree with it
        name_of: dict[int, str] = {}
        id_of: dict[str, int] = {}
        for row, (i, n) in enumerate(zip(ids, names, strict=True), start=2):
            if i < 0 or not n:
                continue
            if name_of.setdefault(i, n) != n or id_of.setdefault(n, i) != i:
                raise DataError(
                    f"{csv_path} row {row}: label {i} and class_name {n!r} disagree "
                    "with earlier rows; make each label match one class_name"
                )
        names = [n or name_of.get(i, "") for i, n in zip(ids, names, strict=True)]
    return classes, np.array([index[n] if n else -1 for n in names], dtype=np.int64)


def _csv_source(csv_path: Path, split: str | None, channels: int) -> FileSource:
    key = {"kind": "csv", "root": str(csv_path), "split": split}
    return index_cache.cached(key, lambda: _scan_csv_source(csv_path, split, channels), channels)


def _scan_csv_source(csv_path: Path, split: str | None, channels: int) -> FileSource:
    index_cache.record(csv_path)
    columns, rows = _read_csv(csv_path)
    path_col = next((columns[c] for c in _CSV_PATH_COLUMNS if c in columns), None)
    if path_col is None:
        raise DataError(
            f"{csv_path} has no path column (name one of "
            f"{', '.join(_CSV_PATH_COLUMNS)}); its columns are: "
            f"{', '.join(columns.values()) or 'none'}"
        )
    if not rows:
        raise DataError(f"{csv_path} lists no images: add one row per image")

    def column(*names: str) -> list[str] | None:
        key = next((columns[n] for n in names if n in columns), None)
        return None if key is None else [(r.get(key) or "").strip() for r in rows]

    splits = column("split")
    present = _ordered_splits(canonical_split(s) for s in splits or [] if s)
    if split is not None and split not in present:
        raise _missing_split(csv_path, split, present)
    ids = column("label")
    if ids is not None:
        ids = [_parse_label(csv_path, row, v) for row, v in enumerate(ids, start=2)]
    classes, labels = _csv_labels(csv_path, len(rows), ids, column("class_name", "class"))

    paths = []
    for row, r in enumerate(rows, start=2):
        p = (r.get(path_col) or "").strip()
        if not p:
            raise DataError(f"{csv_path} row {row}: empty {path_col!r}; give every row a path")
        paths.append(os.path.join(csv_path.parent, os.path.expanduser(p)))
    if split is not None:
        keep = np.array([canonical_split(s) == split if s else False for s in splits])
        paths = [p for p, k in zip(paths, keep, strict=True) if k]
        labels = labels[keep]
    name = _with_split(f"csv {csv_path}", split, present)
    return FileSource(name, paths, labels, classes, channels)


# ----------------------------------------------------------------------------- .npz arrays


def _npz_header(path: Path, key: str) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of one array in a .npz, read from its header without loading it."""
    with zipfile.ZipFile(path) as zf, zf.open(f"{key}.npy") as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(f)
            return shape, dtype
        if version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(f)
            return shape, dtype
    with np.load(path, allow_pickle=False) as npz:
        array = npz[key]
        return array.shape, array.dtype


def _npz_splits(path: Path, keys: Iterable[str]) -> dict[str | None, str]:
    """Canonical split (None for a plain ``images`` array) -> images key."""
    found: dict[str | None, str] = {}
    for key in keys:
        if key == "images":
            found[None] = key
        elif key.endswith("_images"):
            split = canonical_split(key[: -len("_images")])
            if split in found:
                raise DataError(
                    f"{path} has both {found[split]} and {key} for the {split} split: keep one"
                )
            found[split] = key
    if None in found and len(found) > 1:
        raise DataError(f"{path} has both 'images' and per-split '<split>_images' arrays: keep one")
    return found


def _npz_labels(path: Path, npz: np.lib.npyio.NpzFile, key: str, n: int) -> np.ndarray:
    """Labels (n,) int64 for one images key, -1 when absent or multi-label."""
    labels_key = key[: -len("images")] + "labels"
    if labels_key not in npz.files:
        return np.full(n, -1, dtype=np.int64)
    labels = npz[labels_key]
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        log.warning(
            "%s: %s has shape %s (multi-label); using %s unlabelled",
            path,
            labels_key,
            labels.shape,
            key,
        )
        return np.full(n, -1, dtype=np.int64)
    if len(labels) != n:
        raise DataError(f"{path}: {labels_key} has {len(labels)} labels for {n} images in {key}")
    integral = labels.dtype.kind in "iub" or (
        labels.dtype.kind == "f" and bool(np.all(np.mod(labels, 1) == 0))
    )
    if not integral:
        raise DataError(f"{path}: {labels_key} holds non-integer values; store class ids")
    return np.maximum(labels.astype(np.int64), -1)


def _npz_source(path: Path, split: str | None, channels: int) -> NpzSource:
    try:
        npz = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise DataError(f"cannot read {path}: {describe_error(exc)}") from exc
    with npz:
        splits = _npz_splits(path, npz.files)
        if not splits:
            raise DataError(
                f"{path} has no image arrays (it has {', '.join(npz.files) or 'none'})"
                ": expected train_images, val_images, test_images (+ _labels)"
            )
        present = _ordered_splits(s for s in splits if s is not None)
        if split is not None and split not in splits:
            raise _missing_split(path, split, present)
        keys = [splits[s] for s in present] if present else [splits[None]]
        sizes, labels = [], []
        for key in keys:
            shape, dtype = _npz_header(path, key)
            if dtype != np.uint8 or len(shape) not in (3, 4):
                raise DataError(
                    f"{path}: {key} is {dtype} {shape}; expected uint8 images "
                    "(N, H, W) or (N, H, W, C)"
                )
            sizes.append(shape[0])
            labels.append(_npz_labels(path, npz, key, shape[0]))
        if "classes" in npz.files:
            try:
                classes = [str(c) for c in npz["classes"].reshape(-1)]
            except ValueError as exc:
                raise DataError(f"{path}: 'classes' must be a string array, not objects") from exc
        else:
            classes = [str(k) for k in range(max(int(lab.max(initial=-1)) for lab in labels) + 1)]
    top = max(int(lab.max(initial=-1)) for lab in labels)
    if top >= len(classes):
        raise DataError(f"{path}: label {top} but only {len(classes)} classes in 'classes'")

    chosen = [keys.index(splits[split])] if split is not None else range(len(keys))
    key_ids = np.concatenate([np.full(sizes[k], k, dtype=np.int64) for k in chosen])
    rows = np.concatenate([np.arange(sizes[k], dtype=np.int64) for k in chosen])
    if len(rows) == 0:
        raise DataError(f"{path}: {', '.join(keys[k] for k in chosen)} holds no images")
    name = _with_split(f"npz {path}", split, present)
    return NpzSource(
        name,
        path,
        keys,
        key_ids,
        rows,
        np.concatenate([labels[k] for k in chosen]),
        classes,
        channels,
    )


# ----------------------------------------------------------------------------- entry points


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
        source = _folder_source(path, split, channels)
    elif path.suffix.lower() == ".csv":
        source = _csv_source(path, split, channels)
    elif path.suffix.lower() == ".npz":
        return _npz_source(path, split, channels)
    else:
        raise DataError(f"cannot open {path} as a data source: {EXPECTED}")
    source.options = options
    return _expand_volumes(source)


def list_splits(spec: str | Path) -> list[str]:
    """Canonical split names present in ``spec`` (e.g. ["train", "val", "test"]); [] if none."""
    path = _resolve(spec)
    if path.is_dir():
        return _ordered_splits(_split_dirs(path))
    suffix = path.suffix.lower()
    if suffix == ".csv":
        columns, rows = _read_csv(path)
        if "split" not in columns:
            return []
        return _ordered_splits(
            canonical_split(s) for r in rows if (s := (r.get(columns["split"]) or "").strip())
        )
    if suffix == ".npz":
        with np.load(path, allow_pickle=False) as npz:
            return _ordered_splits(s for s in _npz_splits(path, npz.files) if s is not None)
    raise DataError(f"cannot open {path} as a data source: {EXPECTED}")


def check_source(
    source: ImageSource,
    sample: int = 64,
    min_good_fraction: float = 0.5,
    skip_constant: bool = False,
    bad_file_log: str | Path | None = None,
) -> dict[str, int]:
    """Decode a random sample of up to ``sample`` items and fail early if too few are usable.

    Returns the number of bad sampled items per reason (``readers.BAD_REASONS``). Raises
    DataError when the source is empty, when an optional reader is missing, or when fewer than
    ``min_good_fraction`` of the sample are usable, naming the counts per reason and up to three
    bad files. With ``skip_constant``, blank images count as bad. Bad files found are appended
    to ``bad_file_log`` (``path<TAB>[reason] message``). Run it before training so a broken
    path fails in seconds, not mid-epoch.
    """
    from acclimate.data.dataset import append_bad_file

    n = len(source)
    if n == 0:
        raise DataError(f"{source.name} holds no images: {EXPECTED}")
    rng = np.random.default_rng(0)
    picked = np.sort(rng.choice(n, size=min(max(sample, 1), n), replace=False))
    bad: list[tuple[str, str, str]] = []
    for i in picked.tolist():
        try:
            image = source.load(i)
            if skip_constant:
                reject_constant(image)
        except MissingExtra:
            raise
        except Exception as exc:  # decoders raise OSError, ValueError, SyntaxError, ...
            bad.append((source.describe(i), bad_reason(exc), describe_error(exc)))
    counts: dict[str, int] = {}
    for _, reason, _ in bad:
        counts[reason] = counts.get(reason, 0) + 1
    if bad_file_log is not None:
        for where, reason, text in bad:
            append_bad_file(bad_file_log, where, reason, text)
    good = len(picked) - len(bad)
    per_reason = ", ".join(f"{r} {c}" for r, c in sorted(counts.items()))
    examples = "; ".join(f"{where} ({text})" for where, _, text in bad[:3])
    if good < min_good_fraction * len(picked):
        raise DataError(
            f"{source.name}: only {good} of {len(picked)} sampled images are "
            f"readable (need {min_good_fraction:.0%}; bad: {per_reason}), e.g. {examples}; "
            "fix or remove the bad files, or check the path, format, channels and bands"
        )
    log.info(
        "%s: %d images, %d classes; %d of %d sampled images readable",
        source.name,
        n,
        len(source.classes),
        good,
        len(picked),
    )
    if bad:
        log.warning(
            "%s: %d of %d sampled images unusable and will be skipped (%s), e.g. %s",
            source.name,
            len(bad),
            len(picked),
            per_reason,
            examples,
        )
    return counts
