"""CSV manifest sources: a path column (``path``, ``file``, ``filename`` or ``image``, relative
to the CSV's folder) and optional ``label``, ``class_name`` (or ``class``) and ``split`` columns."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from acclimate.data import index_cache
from acclimate.data.index_cache import FileIndex, Watched
from acclimate.data.paths import PathArray
from acclimate.data.readers import DataError, describe_error
from acclimate.data.sources.base import FileSource
from acclimate.data.sources.splits import (
    canonical_split,
    missing_split,
    ordered_splits,
    with_split,
)

_CSV_PATH_COLUMNS = ("path", "file", "filename", "image")


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


def csv_splits(csv_path: Path) -> list[str]:
    """Canonical split names in a manifest's ``split`` column, in order; [] without one."""
    columns, rows = _read_csv(csv_path)
    if "split" not in columns:
        return []
    return ordered_splits(
        canonical_split(s) for r in rows if (s := (r.get(columns["split"]) or "").strip())
    )


def csv_source(csv_path: Path, split: str | None, channels: int) -> FileSource:
    """The images a manifest lists (one split of it, or all): read, or from the index cache."""
    key = {"kind": "csv", "root": str(csv_path), "split": split}
    index = index_cache.cached(key, lambda watched: _scan_csv_index(csv_path, split, watched))
    return FileSource.from_index(index, channels)


def _scan_csv_index(csv_path: Path, split: str | None, watched: Watched) -> FileIndex:
    watched.add(csv_path)
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
    present = ordered_splits(canonical_split(s) for s in splits or [] if s)
    if split is not None and split not in present:
        raise missing_split(csv_path, split, present)
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
    name = with_split(f"csv {csv_path}", split, present)
    return FileIndex(name, PathArray(paths), labels, classes)
