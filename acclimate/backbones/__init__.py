"""Backbones: one timm factory, weights from the hub, a package or a local file in any known format.

>>> model = create_backbone("vit_small_patch14_dinov2", weights="dinov2_vits14_pretrain.pth")
>>> model(images).shape  # images (B, 3, H, W), H and W multiples of 14 -> (B, feature_dim(model))
"""

from acclimate.backbones.errors import BackboneError
from acclimate.backbones.factory import (
    create_backbone,
    feature_dim,
    is_vit,
    package_weights_path,
    takes_dynamic_img_size,
)
from acclimate.backbones.formats import FORMATS, CheckpointFormat, read_state_dict
from acclimate.backbones.loading import LoadReport, load_weights

__all__ = [
    "FORMATS",
    "BackboneError",
    "CheckpointFormat",
    "LoadReport",
    "create_backbone",
    "feature_dim",
    "is_vit",
    "load_weights",
    "package_weights_path",
    "read_state_dict",
    "takes_dynamic_img_size",
]
