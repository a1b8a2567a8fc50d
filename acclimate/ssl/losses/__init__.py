"""Self-supervised losses: one loss per module, maths in ``forward``."""

from acclimate.ssl.losses.dino_loss import DINOLoss

__all__ = ["DINOLoss"]
