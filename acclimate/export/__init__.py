"""Export folders (timm layout + probes + metadata) and loading them."""

from acclimate.export.artifact import export_backbone
from acclimate.export.card import write_model_card
from acclimate.export.load import Extractor, ResolvedModel, load, resolve_model
from acclimate.export.meta import META_FILE

__all__ = [
    "META_FILE",
    "Extractor",
    "ResolvedModel",
    "export_backbone",
    "load",
    "resolve_model",
    "write_model_card",
]
