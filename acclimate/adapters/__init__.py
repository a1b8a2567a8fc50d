"""Parameter-efficient adaptation: LoRA (config / layer / inject / merge) and freezing policies.

>>> report = apply_adapter(backbone, AdapterSettings(lora_rank=8, target_modules=["attn.qkv"],
...                                                  unfreeze_last_blocks=1, train_norms=True))
>>> plain = merge_lora(copy.deepcopy(backbone))  # same structure and names as the timm model
"""

from acclimate.adapters.apply import ADAPTER_ATTR, AdapterReport, apply_adapter, fingerprint
from acclimate.adapters.checkpoint import CKPT_KEY, AdapterCheckpoint, base_reference
from acclimate.adapters.config import AdapterError, AdapterSettings
from acclimate.adapters.freeze import block_names, count_parameters, last_blocks, trainable_names
from acclimate.adapters.inject import inject_lora, matches
from acclimate.adapters.layer import LoRALayer
from acclimate.adapters.merge import has_lora, merge_lora

__all__ = [
    "ADAPTER_ATTR",
    "CKPT_KEY",
    "AdapterCheckpoint",
    "AdapterError",
    "AdapterReport",
    "AdapterSettings",
    "LoRALayer",
    "apply_adapter",
    "base_reference",
    "block_names",
    "count_parameters",
    "fingerprint",
    "has_lora",
    "inject_lora",
    "last_blocks",
    "matches",
    "merge_lora",
    "trainable_names",
]
