"""acclimate: continue self-supervised pretraining of pretrained timm backbones on new domains,
export the adapted frozen extractor with linear probes, and show that adaptation helped."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from acclimate.export.load import Extractor


def load(path: Any, device: str = "cpu") -> Extractor:
    """Load an export folder: an extractor with preprocessing, features and probe predictions."""
    from acclimate.export.load import load as _load

    return _load(path, device)


__all__ = ["__version__", "load"]
