"""Step throughput of every registered method versus a plain forward + backward of the backbone.

For each method in ``acclimate.ssl.METHODS`` and each backbone (random weights, no network), one
optimisation step (the module's own hooks: schedules, ``training_step``, backward, optimiser,
EMA) is timed on a fixed batch of pre-made crops, and compared with a plain forward + backward +
AdamW step of the backbone on the crops that the method feeds it (the "same crops"); the two are
interleaved step by step so that both see the same load. Images/s counts source images, not
crops. Heads have the recipes' sizes (MoCo: 3-layer projector); ``distill`` has a ViT-S/16
teacher (its forward counts).

    python bench/bench_methods.py                          # ViT-Tiny/16 and ResNet-18 at 64 px
    python bench/bench_methods.py --batch 64 --steps 10 --threads 4
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from types import SimpleNamespace

import torch
from torch import Tensor, nn

from acclimate.backbones import create_backbone
from acclimate.ssl import METHODS, OptimSettings, SSLModule

# recipe-sized heads and the crops each method sees: (globals, locals, crops fed to the backbone)
SETTINGS: dict[str, dict] = {
    "dino": {"kw": {"out_dim": 4096, "freeze_last_layer_epochs": 0}, "locals": 4},
    "dinov2": {"kw": {"out_dim": 4096, "freeze_last_layer_epochs": 0}, "locals": 4},
    "mae": {"kw": {}, "locals": 0, "baseline_globals": 1},
    "simclr": {"kw": {}, "locals": 0},
    "moco": {"kw": {}, "locals": 0},
    "byol": {"kw": {}, "locals": 0},
    "distill": {
        "kw": {"teacher_name": "vit_small_patch16_224", "teacher_weights": None},
        "locals": 0,
    },
}


def _stub(module: SSLModule, optimizer: torch.optim.Optimizer) -> SimpleNamespace:
    trainer = SimpleNamespace(
        global_step=0,
        num_training_batches=1000,
        estimated_stepping_batches=10000,
        max_epochs=10,
        accumulate_grad_batches=1,
        world_size=1,
        optimizers=[optimizer],
    )
    module._trainer = trainer  # type: ignore[assignment]
    module.log = module.log_dict = lambda *a, **k: None  # type: ignore[method-assign]
    return trainer


def method_step(name: str, backbone_name: str, views: dict) -> Callable[[], None]:
    """One optimisation step of the method through its own hooks (a function to call)."""
    torch.manual_seed(0)
    optim = OptimSettings(freeze_backbone_epochs=0, warmup_epochs=0)
    module = METHODS[name](create_backbone(backbone_name), 1, optim, **SETTINGS[name]["kw"])
    module.train()
    trainer = _stub(module, None)  # type: ignore[arg-type]
    configured = module.configure_optimizers()
    optimizer, schedule = configured["optimizer"], configured["lr_scheduler"]["scheduler"]
    schedule.refresh()  # what on_train_start does
    trainer.optimizers = [optimizer]
    batch = (views, None)
    count = iter(range(10**9))

    def step() -> None:
        i = next(count)
        trainer.global_step = i
        module.on_train_batch_start(batch, i)

        def closure() -> Tensor:
            optimizer.zero_grad(set_to_none=True)
            loss = module.training_step(batch, 0)
            loss.backward()
            module.on_after_backward()
            return loss

        module.optimizer_step(0, i, optimizer, closure)
        schedule.step()  # what Lightning does after each optimiser step

    return step


def plain_step(backbone_name: str, crops: list[Tensor]) -> Callable[[], None]:
    """Forward + backward of the backbone on ``crops`` (one pass per crop size) + AdamW."""
    torch.manual_seed(0)
    model: nn.Module = create_backbone(backbone_name).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        i = 0
        while i < len(crops):
            j = i
            while j < len(crops) and crops[j].shape == crops[i].shape:
                j += 1
            model(torch.cat(crops[i:j])).float().pow(2).mean().backward()
            i = j
        optimizer.step()

    return step


def timed(steps: list[Callable[[], None]], n: int) -> list[float]:
    """Median seconds of each step function, calls interleaved so that both see the same load
    (this machine is shared), after 2 warm-up rounds."""
    times: list[list[float]] = [[] for _ in steps]
    for r in range(n + 2):
        for fn, t in zip(steps, times, strict=True):
            t0 = time.perf_counter()
            fn()
            if r >= 2:
                t.append(time.perf_counter() - t0)
    return [statistics.median(t) for t in times]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbones", nargs="+", default=["vit_tiny_patch16_224", "resnet18"])
    p.add_argument("--methods", nargs="+", default=list(METHODS))
    p.add_argument("--size", type=int, default=64, help="global crop side (locals: half)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=3, help="timed steps (after 2 warm-up steps)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    import logging

    logging.getLogger("acclimate").setLevel(logging.ERROR)  # random-weights warnings

    print(f"batch {args.batch}, {args.size} px globals, {args.threads} thread(s), CPU, fp32\n")
    print(
        "| backbone | method | crops/image | step s | images/s | plain fwd+bwd images/s | ratio |"
    )
    print("|---|---|---|---|---|---|---|")
    for backbone in args.backbones:
        for name in args.methods:
            cls = METHODS[name]
            check = getattr(cls, "check_backbone", None)
            if check is not None and check(backbone):
                print(f"| {backbone} | {name} | - | - | n/a (needs a ViT) | - | - |")
                continue
            s = SETTINGS.get(name, {"kw": {}, "locals": 0})
            g = torch.Generator().manual_seed(0)
            b, size = args.batch, args.size
            globals_ = [torch.randn(b, 3, size, size, generator=g) for _ in range(2)]
            locals_ = [torch.randn(b, 3, size // 2, size // 2, generator=g)] * s["locals"]
            views = {"global": globals_, "local": locals_}
            crops = globals_[: s.get("baseline_globals", 2)] + locals_
            t_method, t_plain = timed(
                [method_step(name, backbone, views), plain_step(backbone, crops)], args.steps
            )
            print(
                f"| {backbone} | {name} | {len(crops)} | {t_method:.3f} | {b / t_method:.1f} "
                f"| {b / t_plain:.1f} | {t_method / t_plain:.2f}x |",
                flush=True,
            )


if __name__ == "__main__":
    main()
