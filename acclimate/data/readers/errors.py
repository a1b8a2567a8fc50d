"""What can go wrong reading data: the exceptions, and why an item was skipped (``BAD_REASONS``)."""

from __future__ import annotations

import importlib
from types import ModuleType

from PIL import Image

from acclimate.errors import AcclimateError

# Why an item was skipped; bad_files.txt and the run log count items per reason.
BAD_REASONS = (
    "missing",
    "unreadable",
    "truncated",
    "band_count",
    "dtype",
    "constant",
    "nodata",  # more than MAX_NODATA_FRACTION of the values are missing
    "too large",  # the header declares more than ReadOptions.max_pixels pixels
    "not finite",  # the features of the image are not finite (eval, embed)
)


class DataError(AcclimateError):
    """A data source is missing, empty, malformed or unreadable. The message names the path and
    the fix, on one line."""


class BadImage(DataError):
    """One item cannot be used; ``reason`` is one of ``BAD_REASONS``."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class MissingExtra(DataError):
    """An optional dependency is not installed; the message names the extra to install."""


def require(module: str, extra: str, what: str) -> ModuleType:
    """Import ``module`` or raise MissingExtra naming ``pip install 'acclimate[extra]'``."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtra(
            f"reading {what} needs the '{module}' package: pip install 'acclimate[{extra}]'"
        ) from None


def bad_reason(exc: BaseException) -> str:
    """The ``BAD_REASONS`` entry for an exception raised while decoding one item."""
    if isinstance(exc, BadImage):
        return exc.reason
    if isinstance(exc, FileNotFoundError):
        return "missing"
    if isinstance(exc, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return "too large"
    text = str(exc).lower()
    if isinstance(exc, EOFError) or any(
        w in text
        for w in ("truncated", "end of file", "unexpected eof", "not enough data", "failed to read")
    ):
        return "truncated"
    return "unreadable"


def describe_error(exc: BaseException) -> str:
    """``"OSError: image file is truncated"``: the exception on one line, for logs."""
    return " ".join(f"{type(exc).__name__}: {exc}".split())
