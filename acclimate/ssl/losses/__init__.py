"""Self-supervised losses: one loss per module, maths in ``forward``."""

from acclimate.ssl.losses.byol_loss import BYOLLoss
from acclimate.ssl.losses.dino_loss import DINOLoss
from acclimate.ssl.losses.distill_loss import EmbeddingDistillLoss
from acclimate.ssl.losses.ibot_loss import IBOTLoss
from acclimate.ssl.losses.koleo_loss import KoLeoLoss
from acclimate.ssl.losses.mae_loss import MAELoss
from acclimate.ssl.losses.moco_loss import MoCoV3Loss
from acclimate.ssl.losses.ntxent_loss import NTXentLoss

__all__ = [
    "BYOLLoss",
    "DINOLoss",
    "EmbeddingDistillLoss",
    "IBOTLoss",
    "KoLeoLoss",
    "MAELoss",
    "MoCoV3Loss",
    "NTXentLoss",
]
