"""acclimate: continue self-supervised pretraining of pretrained timm backbones on new domains,
export the adapted frozen extractor with linear probes, and show that adaptation helped."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from acclimate.api import Run
    from acclimate.export.load import Extractor


def load(path: Any, device: str = "cpu") -> Extractor:
    """Load an export folder: an extractor with preprocessing, features and probe predictions."""
    from acclimate.export.load import load as _load

    return _load(path, device)


def train(recipe: Any, run_dir: Any = None, export: bool = True, **overrides: Any) -> Run:
    """Train a recipe and export it: ``acclimate.train("recipes/demo.yaml", trainer={"max_epochs":
    2})`` -> a `Run` (folder, metrics, export path). See `acclimate.api.train`."""
    from acclimate.api import train as _train

    return _train(recipe, run_dir=run_dir, export=export, **overrides)


__all__ = ["__version__", "load", "train"]
