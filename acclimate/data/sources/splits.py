"""Split names (``train``, ``val``, ``test``) and the messages every kind of source shares."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from acclimate.data.readers import DataError

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


def canonical_split(name: str) -> str:
    """``valid`` and ``validation`` -> ``val``; other names lower-cased and kept."""
    key = name.strip().lower()
    return SPLIT_ALIASES.get(key, key)


def ordered_splits(names: Iterable[str]) -> list[str]:
    """``train``, ``val``, ``test`` first (those present), then the others sorted."""
    names = set(names)
    return [s for s in SPLIT_ORDER if s in names] + sorted(names - set(SPLIT_ORDER))


def missing_split(where: object, split: str, present: Sequence[str]) -> DataError:
    """The error for asking ``where`` for a split it does not have."""
    if not present:
        return DataError(
            f"{where} has no splits, so split={split!r} cannot be chosen: "
            "pass no split to use all of it, or point at a source with splits"
        )
    return DataError(f"{where} has no split {split!r}: the splits present are {', '.join(present)}")


def with_split(name: str, split: str | None, splits: Sequence[str]) -> str:
    """A source's name with the split chosen, or the splits it joins."""
    if split is not None:
        return f"{name} (split {split})"
    return f"{name} (splits {'+'.join(splits)})" if splits else name
