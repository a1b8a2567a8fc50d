"""Self-supervised methods: one LightningModule per method, composed from small parts."""

from acclimate.ssl.base import SSLModule
from acclimate.ssl.dino import DINO
from acclimate.ssl.optim import OptimSettings

METHODS: dict[str, type[SSLModule]] = {"dino": DINO}

__all__ = ["DINO", "METHODS", "OptimSettings", "SSLModule"]
