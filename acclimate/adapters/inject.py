"""Put LoRA layers into a model: one walk over ``named_modules()``, replacing matching layers."""

from __future__ import annotations

import re
from collections.abc import Sequence

from torch import nn

from acclimate.adapters.config import AdapterError
from acclimate.adapters.layer import LoRALayer


def matches(name: str, target_modules: Sequence[str] | str) -> bool:
    """peft's rule: a regex string must match the whole dotted name; a list entry must equal the
    name or its ending after a dot (``"qkv"`` matches ``blocks.3.attn.qkv``)."""
    if isinstance(target_modules, str):
        return re.fullmatch(target_modules, name) is not None
    return any(name == t or name.endswith("." + t) for t in target_modules)


def _wrappable(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or (type(module) is nn.Conv2d and module.groups == 1)


def inject_lora(
    model: nn.Module,
    target_modules: Sequence[str] | str,
    rank: int,
    alpha: float,
    dropout: float = 0.0,
    exclude: Sequence[str] = (),
) -> list[str]:
    """Replace every matching layer of ``model`` (in place) by a `LoRALayer` around it.

    Args:
        target_modules: see `matches`.
        exclude: dotted prefixes of submodules left alone (blocks that train in full).

    Returns:
        The names of the wrapped layers.

    Raises:
        AdapterError: nothing matched, or a matching layer is neither ``nn.Linear`` nor a
            ``groups=1`` ``nn.Conv2d`` (the message lists layer names that could be targets).
    """
    skip = tuple(p + "." for p in exclude)
    found = [
        (name, m)
        for name, m in model.named_modules()
        if name
        and matches(name, target_modules)
        and not isinstance(m, LoRALayer)
        and not name.endswith(".base_layer")
        and not (name + ".").startswith(skip)
    ]
    wrong = [f"{n} ({type(m).__name__})" for n, m in found if not _wrappable(m)]
    if wrong:
        raise AdapterError(
            f"target_modules {target_modules!r} matched layers LoRA cannot wrap: {wrong[:5]}; "
            "it wraps nn.Linear and nn.Conv2d with groups=1"
        )
    if not found:
        names = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if _wrappable(m)})
        raise AdapterError(
            f"target_modules {target_modules!r} matched no layer of {type(model).__name__}"
            f"{' outside the unfrozen blocks' if exclude else ''}; its linear / conv layers are "
            f"named {names[:20]}"
        )
    for name, layer in found:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child, LoRALayer(layer, rank, alpha, dropout))
    return [n for n, _ in found]
