"""Self-supervised methods: one LightningModule per method, composed from small parts."""

from acclimate.ssl.base import SSLModule
from acclimate.ssl.byol import BYOL
from acclimate.ssl.dino import DINO
from acclimate.ssl.dinov2 import DINOv2
from acclimate.ssl.distill import Distill
from acclimate.ssl.mae import MAE
from acclimate.ssl.moco import MoCoV3
from acclimate.ssl.optim import OptimSettings
from acclimate.ssl.simclr import SimCLR

METHODS: dict[str, type[SSLModule]] = {
    "dino": DINO,
    "dinov2": DINOv2,
    "mae": MAE,
    "simclr": SimCLR,
    "moco": MoCoV3,
    "byol": BYOL,
    "distill": Distill,
}

__all__ = [
    "BYOL",
    "DINO",
    "DINOv2",
    "Distill",
    "MAE",
    "METHODS",
    "MoCoV3",
    "OptimSettings",
    "SSLModule",
    "SimCLR",
]
