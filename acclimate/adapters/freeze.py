"""Freezing policies: which tensors of a backbone train (last k blocks, norms, biases, patch
embedding), and counting trainable parameters."""

from __future__ import annotations

from torch import nn

from acclimate.adapters.config import AdapterError

# Containers whose children are the blocks (or stages), in forward order, in timm models:
# ViT / DeiT / Eva / EfficientNet / MobileNet ("blocks"), ConvNeXt / RegNet / many ("stages"),
# Swin ("layers").
BLOCK_CONTAINERS = ("blocks", "stages", "layers")
_NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm)
_EMBED_PARAMS = ("pos_embed", "cls_token", "reg_token", "dist_token", "register_tokens")


def block_names(model: nn.Module) -> list[str]:
    """Dotted names of the model's blocks (or stages), in forward order.

    A ``blocks`` / ``stages`` / ``layers`` container gives its children; ResNets give
    ``layer1 ... layerN``; otherwise the modules named by timm's ``feature_info``.

    Raises:
        AdapterError: none of these rules applies.
    """
    for attr in BLOCK_CONTAINERS:
        container = getattr(model, attr, None)
        if isinstance(container, (nn.Sequential, nn.ModuleList)) and len(container):
            return [f"{attr}.{name}" for name, _ in container.named_children()]
    layers = [n for n, _ in model.named_children() if n.startswith("layer") and n[5:].isdigit()]
    if layers:
        return sorted(layers, key=lambda n: int(n[5:]))
    info = getattr(model, "feature_info", None)
    names: list[str] = []
    for entry in info or []:
        name = entry.get("module") if isinstance(entry, dict) else None
        if name and name not in names and any(True for _ in model.get_submodule(name).parameters()):
            names.append(name)
    if names:
        return names
    raise AdapterError(
        f"cannot tell the blocks of {type(model).__name__}: it has no {'/'.join(BLOCK_CONTAINERS)} "
        "container, no layer1..N and no timm feature_info; use lora_rank, train_norms, "
        "train_biases or train_patch_embed instead of unfreeze_last_blocks"
    )


def last_blocks(model: nn.Module, k: int) -> list[str]:
    """Names of the last ``k`` blocks plus the top-level modules registered after them (the final
    norm, a CNN's head convolution): everything from block ``-k`` to the output."""
    if k <= 0:
        return []
    blocks = block_names(model)
    if k > len(blocks):
        raise AdapterError(
            f"unfreeze_last_blocks={k} but {type(model).__name__} has {len(blocks)} blocks "
            f"({blocks[0]} ... {blocks[-1]})"
        )
    top = blocks[-1].split(".")[0]
    children = [n for n, _ in model.named_children()]
    tail = children[children.index(top) + 1 :] if top in children else []
    return blocks[-k:] + [n for n in tail if n not in blocks]


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, _NORMS) or "norm" in type(module).__name__.lower()


def trainable_names(
    model: nn.Module,
    unfreeze_last_blocks: int = 0,
    norms: bool = False,
    biases: bool = False,
    patch_embed: bool = False,
) -> set[str]:
    """Names of the parameters of ``model`` that a policy trains (LoRA tensors not included)."""
    prefixes = tuple(n + "." for n in last_blocks(model, unfreeze_last_blocks))
    if patch_embed:
        if hasattr(model, "patch_embed"):
            prefixes += ("patch_embed.",)
        else:
            first = (getattr(model, "pretrained_cfg", None) or {}).get("first_conv")
            firsts = [first] if isinstance(first, str) else list(first or [])
            if not firsts:
                raise AdapterError(
                    f"{type(model).__name__} has no patch_embed and no pretrained_cfg first_conv"
                )
            prefixes += tuple(f + "." for f in firsts)
    out = set()
    for name, _ in model.named_parameters():
        embed = patch_embed and name in _EMBED_PARAMS
        if name.startswith(prefixes) or embed or (biases and name.endswith("bias")):
            out.add(name)
    if norms:
        for mname, m in model.named_modules():
            if _is_norm(m):
                out.update(f"{mname}.{p}" if mname else p for p, _ in m.named_parameters())
    return out


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts (shared tensors counted once)."""
    seen: dict[int, tuple[int, bool]] = {}
    for p in model.parameters():
        seen[id(p)] = (p.numel(), p.requires_grad)
    return sum(n for n, t in seen.values() if t), sum(n for n, _ in seen.values())
