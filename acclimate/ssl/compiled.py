"""``trainer.compile``: torch.compile of the networks a training step runs, in place.

`nn.Module.compile` compiles a module's ``__call__`` and keeps the module: parameter names,
``state_dict`` keys, checkpoints and exports are an uncompiled run's (``torch.compile(module)``
would wrap it and prefix every key with ``_orig_mod.``), so a run resumes with either setting,
and a deep copy is a plain module (`nn.Module.__getstate__` drops the compiled call).
Compilation is lazy: it happens on the first steps, and `compile_errors` turns its failures
into one line.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from timm.models.vision_transformer import VisionTransformer
from torch import nn

from acclimate.errors import ConfigError

FIX = "set trainer.compile: false"


def compile_targets(net: nn.Module) -> nn.Module:
    """What to compile of a backbone: a timm ViT's ``blocks`` (the token paths of MAE and
    DINOv2 call them, not the network, and they hold nearly all of its compute), else the
    network itself."""
    return net.blocks if isinstance(net, VisionTransformer) else net


def compile_networks(networks: list[nn.Module], backend: str = "inductor") -> list[nn.Module]:
    """Compile, in place, `compile_targets` of each of ``networks`` (a method's `networks`:
    student backbone, EMA teacher, frozen start), each module once; returns the compiled ones.

    Student and teacher share their compiled graphs (torch.compile guards on shapes, grad mode
    and train/eval mode, not on which instance runs); the EMA update changes the teacher's
    weights in place, which the graphs read as inputs.

    The graphs are static (``dynamic=False``): one per input size, each compiled once. A step
    runs the same forward at several sizes (global and local crops, a teacher fed upsampled
    views), and torch.compile's default would recompile it with symbolic sizes on the second
    one. For timm's TF-"same"-padded CNNs (``tf_efficientnet_*``) that symbolic fwd + bwd graph
    did not finish compiling in 115 CPU-minutes; the static one takes about two minutes."""
    done: list[nn.Module] = []
    for net in networks:
        target = compile_targets(net)
        if all(target is not d for d in done):
            target.compile(backend=backend, dynamic=False)
            done.append(target)
    return done


def is_compiled(module: nn.Module) -> bool:
    """Whether ``module`` or one of its submodules has a compiled ``__call__``."""
    return any(m._compiled_call_impl is not None for m in module.modules())


def uncompile(module: nn.Module) -> nn.Module:
    """Drop the compiled ``__call__`` of ``module`` and of its submodules; returns it."""
    for m in module.modules():
        m._compiled_call_impl = None
    return module


def compile_failure(error: Exception) -> ConfigError:
    """One line for a torch.compile failure (no C++ compiler, an op the backend cannot lower,
    a graph dynamo cannot trace): what failed, first line only, and the fix."""
    inner = getattr(error, "inner_exception", None) or error
    lines = [line.strip() for line in str(inner).splitlines() if line.strip()]
    first = lines[0] if lines else ""
    first = first if len(first) <= 200 else first[:197] + "..."
    return ConfigError(
        f"trainer.compile: torch.compile failed ({type(inner).__name__}: {first}); {FIX}"
    )


@contextmanager
def compile_errors(enabled: bool) -> Iterator[None]:
    """Re-raise torch.compile's own errors (dynamo, inductor) as `compile_failure`'s one line
    when ``enabled`` (the run compiles); other errors, and every error when not, pass."""
    try:
        yield
    except Exception as e:
        if not enabled:
            raise
        from torch._dynamo.exc import TorchDynamoException

        if isinstance(e, TorchDynamoException):
            raise compile_failure(e) from None
        raise
