"""ONNX export of the frozen extractor: ``model.onnx`` maps a preprocessed batch to the
export's features (its ``features`` kind: pooled, CLS or ``last{k}`` multi-layer). Needs
``pip install acclimate[onnx]`` (onnx, onnxscript for torch's exporter, onnxruntime for the
equality check)."""

from __future__ import annotations

import copy
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from acclimate.eval.features import FeatureKind, check_kind, features_of
from acclimate.export.artifact import ExportError
from acclimate.fileio import write_json_atomic

log = logging.getLogger(__name__)

INPUT, OUTPUT = "images", "features"
SINGLE_FILE_LIMIT = 1_800_000_000  # bytes of weights; protobuf caps one file at 2 GB


class Features(nn.Module):
    """``images`` (B, C, H, W) normalised -> ``features`` (B, D), the features of ``kind`` of
    :func:`acclimate.eval.features.features_of` (``last{k}``: D is the concatenated width)."""

    def __init__(self, backbone: nn.Module, kind: FeatureKind = "pooled") -> None:
        super().__init__()
        check_kind(backbone, kind)
        self.backbone = backbone
        self.kind = kind

    def forward(self, images: Tensor) -> Tensor:
        return features_of(self.backbone, images, self.kind)


def _fixed_size_copy(model: nn.Module, image_size: int) -> nn.Module:
    """A float32 eval copy on the CPU; ViTs get their position embedding resampled once to
    ``image_size`` so the graph holds no per-call interpolation."""
    m = copy.deepcopy(model).cpu().float().eval()
    if hasattr(m, "set_input_size") and hasattr(m, "pos_embed"):
        m.set_input_size(img_size=(image_size, image_size))
    return m


def export_onnx(
    model: nn.Module,
    path: str | Path,
    channels: int,
    image_size: int,
    opset: int = 18,
    kind: FeatureKind = "pooled",
) -> dict[str, Any]:
    """Write ``path`` (ONNX, dynamic batch axis) for ``model`` at ``image_size``, whose output
    is the features of ``kind``.

    Uses torch's ``torch.export``-based exporter (``dynamo=True``). Weights over about 1.8 GB go
    to an external ``path.data`` file beside it. Returns the description stored in
    ``acclimate.json`` under ``onnx``.
    """
    path = Path(path)
    wrapped = Features(_fixed_size_copy(model, image_size), kind).eval()
    x = torch.randn(2, channels, image_size, image_size)
    n_bytes = sum(p.numel() * p.element_size() for p in wrapped.parameters())
    with torch.no_grad():
        dim = int(wrapped(x).shape[1])
        torch.onnx.export(
            wrapped,
            (x,),
            str(path),
            input_names=[INPUT],
            output_names=[OUTPUT],
            dynamic_shapes=({0: torch.export.Dim("batch")},),
            opset_version=opset,
            dynamo=True,
            external_data=n_bytes > SINGLE_FILE_LIMIT,
            verbose=False,
        )
    return {
        "file": path.name,
        "input": INPUT,
        "input_shape": ["batch", channels, image_size, image_size],
        "output": OUTPUT,
        "output_shape": ["batch", dim],
        "feature": kind,
        "opset": opset,
    }


def onnx_features(path: str | Path, images: Tensor) -> Tensor:
    """Run ``model.onnx`` with onnxruntime (CPU): images (B, C, H, W) -> features (B, D)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = session.run([OUTPUT], {INPUT: images.float().numpy()})
    return torch.from_numpy(np.asarray(out))


@torch.no_grad()
def onnx_max_abs_diff(
    model: nn.Module, path: str | Path, images: Tensor, kind: FeatureKind = "pooled"
) -> float:
    """Largest absolute difference between onnxruntime's and PyTorch's features of ``kind``."""
    m = _fixed_size_copy(model, images.shape[-1])
    expected = features_of(m, images.float(), kind)
    return float((onnx_features(path, images) - expected).abs().max())


def add_onnx(export_dir: str | Path, check: bool = True, tolerance: float = 1e-4) -> dict[str, Any]:
    """Write ``model.onnx`` into an export folder (from the folder's own weights; its output:
    the export's ``features`` kind), check it against PyTorch with onnxruntime on a random
    batch, record it in ``acclimate.json`` under ``onnx`` and re-render the model card."""
    from acclimate.export.card import write_model_card
    from acclimate.export.load import load
    from acclimate.export.meta import META_FILE, read_export_meta

    out = Path(export_dir)
    ex = load(out)
    kind = ex.feature_kind
    try:
        info = export_onnx(ex.model, out / "model.onnx", ex.channels, ex.image_size, kind=kind)
    except ImportError as e:
        raise ImportError(
            f"ONNX export needs onnx and onnxscript ({e}); pip install 'acclimate[onnx]'"
        ) from e
    info["preprocessing"] = ex.meta.get("preprocessing")
    info["mean"], info["std"] = ex.mean, ex.std
    if check:
        try:
            x = torch.randn(3, ex.channels, ex.image_size, ex.image_size)
            info["max_abs_diff"] = onnx_max_abs_diff(ex.model, out / "model.onnx", x, kind)
        except ImportError:
            log.warning("onnxruntime is not installed: model.onnx was not checked")
        else:
            diff = info["max_abs_diff"]
            if not math.isfinite(diff) or diff > tolerance:  # NaN compares False: test it
                (out / "model.onnx").unlink(missing_ok=True)
                raise ExportError(
                    f"{out / 'model.onnx'}: onnxruntime's features differ from PyTorch's by up "
                    f"to {diff:.2e} on a random batch (tolerance {tolerance:.0e}); the file was "
                    "removed. Check the opset and onnxruntime versions (`pip install "
                    "'acclimate[onnx]'` with constraints.txt), or export without --onnx"
                )
    meta_file = out / META_FILE
    meta = read_export_meta(out)
    meta["onnx"] = info
    write_json_atomic(meta_file, meta)
    write_model_card(out)
    return info
