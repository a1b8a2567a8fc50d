"""A user's own albumentations pipeline (``augment.albumentations: pipeline.yaml``), applied to
every view after the preset's crop and flips, before the preset's photometric ops and the
normalisation. Views reach it as HWC numpy arrays of any channel count, uint8 or float32 as read.

Write the file with albumentations itself::

    import albumentations as A
    A.save(A.Compose([A.GaussNoise(p=0.3), A.CoarseDropout(p=0.5)]), "pipeline.yaml",
           data_format="yaml")

Leave out resizing, cropping and ``Normalize``: acclimate crops, resizes and normalises.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

FORMATS = {".yaml": "yaml", ".yml": "yaml", ".json": "json"}
HOW = "write it with albumentations: A.save(A.Compose([...]), PATH, data_format='yaml' or 'json')"


def _albumentations() -> Any:
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no version check over the network
    try:
        import albumentations
    except ImportError:
        raise ValueError(
            "albumentations: the albumentations package is not installed: "
            "pip install 'acclimate[augment]'"
        ) from None
    return albumentations


def load_pipeline(path: str | Path) -> Any:
    """The albumentations transform serialised in ``path`` (.yaml/.yml or .json), loaded with
    ``A.load``; a ValueError naming the file and the fix when it cannot be."""
    path = Path(path).expanduser()
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"albumentations: {path}: expected a .yaml, .yml or .json file; {HOW}")
    if not path.is_file():
        raise ValueError(f"albumentations: {path}: file not found; {HOW}")
    A = _albumentations()
    try:
        pipeline = A.load(str(path), data_format=fmt)
    except Exception as exc:  # yaml/json errors, unknown transform names, bad arguments
        text = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise ValueError(
            f"albumentations: {path}: not a pipeline albumentations {A.__version__} can load "
            f"({type(exc).__name__}: {text}); {HOW}"
        ) from None
    if not callable(pipeline) or not hasattr(pipeline, "set_random_seed"):
        raise ValueError(f"albumentations: {path}: holds no albumentations transform; {HOW}")
    return pipeline


class AlbumentationsView:
    """Apply an albumentations ``pipeline`` to one view ``(C, H, W)`` (uint8 or float32) and
    return it as ``(C, H, W)``. Its random numbers are seeded from torch's generator (which
    `acclimate.resume.SeededItems` seeds per item), so runs repeat and resume exactly."""

    def __init__(self, pipeline: Any, source: str = "the pipeline") -> None:
        self.pipeline, self.source = pipeline, source

    def __call__(self, x: Tensor) -> Tensor:
        self.pipeline.set_random_seed(int(torch.randint(0, 2**31 - 1, ())))
        image = np.ascontiguousarray(x.permute(1, 2, 0).numpy())
        out = self.pipeline(image=image)["image"]
        if isinstance(out, Tensor):  # a pipeline ending in ToTensorV2: (C, H, W) already
            out = out.permute(1, 2, 0).numpy()
        out = np.asarray(out)
        if out.ndim == 2:
            out = out[:, :, None]
        if out.shape != image.shape:
            raise ValueError(
                f"albumentations: {self.source} turned a {image.shape} view into {out.shape}: "
                "leave out resizing, cropping and channel changes (acclimate crops and resizes)"
            )
        if out.dtype not in (np.uint8, np.float32):
            out = out.astype(np.float32)
        return torch.from_numpy(np.ascontiguousarray(out)).permute(2, 0, 1)
