"""Every method is correct at any world size: 2-process DDP on CPU (gloo) gives the same losses and
the same parameter updates as 1 process on the concatenated batch.

The harness drives each module's own hooks (``on_train_batch_start``, ``training_step``,
``on_after_backward``, ``optimizer_step`` with its EMA updates) in a tiny manual loop with a stub
trainer, and averages gradients over ranks after the backward pass exactly as DDP does. So it
checks the cross-rank pieces themselves: gathered negatives with gradients (SimCLR, MoCo v3), the
all-reduced DINO centre, the synchronised BatchNorm of the projection heads, and losses that are
means over the batch (DDP's gradient averaging then equals the single-process mean).

The backbones are ``test_vit`` (LayerNorm, no BatchNorm) or ``test_resnet`` with
``freeze_norm_stats`` (BatchNorm in eval mode): BatchNorm *training* statistics in the backbone are
per rank unless ``trainer.sync_batchnorm`` (torch's SyncBatchNorm, GPU only) is on, so a backbone
that re-estimates them would legitimately differ from one process.

Random masks (MAE, DINOv2's iBOT) are replaced by masks that are the same for every image and
drawn from a per-call seed (``same_mask_per_image``), so that they do not depend on how the batch
is split: like augmentation, they need not be reproduced, only aligned. DINOv2's KoLeo term is
left out of the comparison (``koleo_weight=0``): its nearest neighbours are searched within each
rank's batch, as in the DINOv2 code, so it legitimately differs from one process.

To cover a new method, add a constructor to ``CASES``.
"""

from __future__ import annotations

import contextlib
import importlib
import itertools
import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from acclimate.backbones import create_backbone
from acclimate.ssl import METHODS, OptimSettings, SSLModule
from acclimate.ssl.masking import block_mask

WORLD = 2
B = 4  # images per rank; the single process sees WORLD * B
STEPS = 2
TOL = 1e-5


def _optim(**kw: object) -> OptimSettings:
    # SGD: its first step is proportional to the gradient (Adam's is nearly its sign and would hide
    # a wrong gradient scale). No warm-up, no frozen phase: every part trains from step 0.
    base = dict(
        lr=0.5, optimizer="sgd", warmup_epochs=0, freeze_backbone_epochs=0, weight_decay=0.01
    )
    return OptimSettings(**{**base, **kw})  # type: ignore[arg-type]


Maker = Callable[[int], SSLModule]  # per-device batch size -> module


def _vit() -> torch.nn.Module:
    return create_backbone("test_vit")


# KoLeo is per rank by design (off here); every image masked so masks do not depend on the split
DINOV2_SMALL = dict(
    out_dim=32,
    hidden_dim=32,
    bottleneck_dim=16,
    momentum_teacher=0.9,
    freeze_last_layer_epochs=0,
    koleo_weight=0.0,
    mask_prob=1.0,
)

CASES: dict[str, tuple[str, Maker]] = {
    # name -> (METHODS key, constructor); momentum < 1 so the EMA updates are visible
    "dino": (
        "dino",
        lambda bs: METHODS["dino"](
            _vit(),
            bs,
            _optim(),
            out_dim=32,
            hidden_dim=32,
            bottleneck_dim=16,
            momentum_teacher=0.9,
            freeze_last_layer_epochs=0,
        ),
    ),
    "dino_bn_head": (  # the head's BatchNorm over the global batch
        "dino",
        lambda bs: METHODS["dino"](
            _vit(),
            bs,
            _optim(),
            out_dim=32,
            hidden_dim=32,
            bottleneck_dim=16,
            use_bn_in_head=True,
            momentum_teacher=0.9,
            freeze_last_layer_epochs=0,
        ),
    ),
    "simclr": (
        "simclr",
        lambda bs: METHODS["simclr"](_vit(), bs, _optim(), proj_hidden_dim=32, proj_dim=16),
    ),
    "simclr_resnet_frozen_bn": (
        "simclr",
        lambda bs: METHODS["simclr"](
            create_backbone("test_resnet"),
            bs,
            _optim(freeze_norm_stats=True),
            proj_hidden_dim=32,
            proj_dim=16,
        ),
    ),
    "moco": (
        "moco",
        lambda bs: METHODS["moco"](
            _vit(), bs, _optim(), hidden_dim=32, dim=16, temperature=0.2, momentum=0.9
        ),
    ),
    "byol": (
        "byol",
        lambda bs: METHODS["byol"](_vit(), bs, _optim(), hidden_dim=32, dim=16, momentum=0.9),
    ),
    "distill": (
        "distill",
        lambda bs: METHODS["distill"](
            _vit(), bs, _optim(), teacher_name="test_resnet", teacher_weights=None
        ),
    ),
    "dinov2": ("dinov2", lambda bs: METHODS["dinov2"](_vit(), bs, _optim(), **DINOV2_SMALL)),
    "dinov2_sinkhorn": (
        "dinov2",
        lambda bs: METHODS["dinov2"](
            _vit(), bs, _optim(), **DINOV2_SMALL, centering="sinkhorn_knopp"
        ),
    ),
    "mae": (
        "mae",
        lambda bs: METHODS["mae"](
            _vit(), bs, _optim(), decoder_dim=16, decoder_depth=1, decoder_heads=2
        ),
    ),
}
CASES = {k: v for k, v in CASES.items() if v[0] in METHODS}  # methods still being written


@contextlib.contextmanager
def same_mask_per_image() -> Iterator[None]:
    """Patch the methods' mask generators: one mask per call, repeated for every image."""
    calls = itertools.count()

    def random_masking(n_images, n_patches, mask_ratio, device=None):  # noqa: ANN001, ANN202
        g = torch.Generator().manual_seed(next(calls))
        n_keep = max(int(round(n_patches * (1 - mask_ratio))), 1)
        keep = torch.randperm(n_patches, generator=g)[:n_keep].repeat(n_images, 1).to(device)
        mask = torch.ones(n_images, n_patches, dtype=torch.bool, device=device)
        return keep, mask.scatter_(1, keep, False)

    def block_masks(n_images, grid, mask_ratio=(0.1, 0.5), mask_prob=0.5, generator=None):  # noqa: ANN001, ANN202
        g = torch.Generator().manual_seed(next(calls))
        n = grid[0] * grid[1]
        one = block_mask(grid, int(n * sum(mask_ratio) / 2), max_block=max(n // 2, 1), generator=g)
        return one.flatten().repeat(n_images, 1)

    patches = {"acclimate.ssl.mae": random_masking, "acclimate.ssl.dinov2": block_masks}
    with contextlib.ExitStack() as stack:
        for module, fn in patches.items():
            with contextlib.suppress(ImportError):
                mod = importlib.import_module(module)
                stack.enter_context(_patched(mod, fn.__name__, fn))
        yield


@contextlib.contextmanager
def _patched(obj: object, name: str, value: object) -> Iterator[None]:
    old = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, old)


def _views(seed: int = 0) -> dict[str, list[torch.Tensor]]:
    """Fixed views for the whole batch: 2 global crops (32 px) and 2 local crops (16 px)."""
    g = torch.Generator().manual_seed(seed)
    n = WORLD * B
    return {
        "global": [torch.randn(n, 3, 32, 32, generator=g) for _ in range(2)],
        "local": [torch.randn(n, 3, 16, 16, generator=g) for _ in range(2)],
    }


def _shard(views: dict[str, list[torch.Tensor]], world: int, rank: int) -> dict:
    n = views["global"][0].shape[0] // world
    return {k: [v[rank * n : (rank + 1) * n] for v in vs] for k, vs in views.items()}


def run_steps(case: str, world: int, rank: int) -> dict:
    """STEPS optimisation steps of ``case`` on this rank's share; returns losses and the state."""
    with same_mask_per_image():
        return _run_steps(case, world, rank)


def _run_steps(case: str, world: int, rank: int) -> dict:
    torch.manual_seed(0)  # the same initial weights on every rank and in the single process
    module = CASES[case][1](WORLD * B // world)
    module.train()
    trainer = SimpleNamespace(
        global_step=0,
        num_training_batches=10,
        estimated_stepping_batches=20,
        max_epochs=2,
        accumulate_grad_batches=1,
        world_size=world,
        optimizers=[],
    )
    module._trainer = trainer  # type: ignore[assignment]
    module.log = module.log_dict = lambda *a, **k: None  # type: ignore[method-assign]
    configured = module.configure_optimizers()
    optimizer, schedule = configured["optimizer"], configured["lr_scheduler"]["scheduler"]
    schedule.refresh()  # what on_train_start does
    trainer.optimizers = [optimizer]
    batch = (_shard(_views(), world, rank), torch.zeros(B, dtype=torch.long))
    losses = []
    for step in range(STEPS):
        trainer.global_step = step
        module.on_train_batch_start(batch, step)

        def closure(step: int = step) -> torch.Tensor:
            optimizer.zero_grad()
            loss = module.training_step(batch, step)
            loss.backward()
            module.on_after_backward()
            if world > 1:  # what DDP does: average the gradients over ranks
                for p in module.parameters():
                    if p.grad is not None:
                        dist.all_reduce(p.grad)
                        p.grad /= world
            mean = loss.detach().clone()
            if world > 1:
                dist.all_reduce(mean)
            losses.append(mean.item() / world)
            return loss

        module.optimizer_step(0, step, optimizer, closure)
        schedule.step()  # what Lightning does after each optimiser step
    state = {k: v.detach().clone() for k, v in module.state_dict().items()}
    return {"losses": losses, "state": state}


def _worker(rank: int, world: int, port: int, out: str, cases: list[str]) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        results = {case: run_steps(case, world, rank) for case in cases}
        torch.save(results, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """One 2-process run for all cases (process start-up dominates the cost)."""
    out = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(WORLD, _free_port(), str(out), list(CASES)), nprocs=WORLD, join=True)
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


@pytest.mark.parametrize("case", list(CASES))
def test_ddp_equals_single_process(case: str, ddp_results: list[dict]) -> None:
    single = run_steps(case, world=1, rank=0)
    # the first update changes the loss, so that comparing the second step's checks the update
    assert abs(single["losses"][1] - single["losses"][0]) > 100 * TOL, single["losses"]
    for rank, res in enumerate(ddp_results):
        got = res[case]
        assert got["losses"] == pytest.approx(single["losses"], rel=TOL, abs=TOL), rank
        for k, v in single["state"].items():
            torch.testing.assert_close(got["state"][k], v, rtol=TOL, atol=TOL, msg=f"{rank}:{k}")
    # and the step did move the weights (otherwise equality would prove nothing)
    torch.manual_seed(0)
    start = CASES[case][1](WORLD * B).state_dict()
    moved = [
        k for k, v in single["state"].items() if v.is_floating_point() and not v.equal(start[k])
    ]
    assert any(k.startswith("backbone.") for k in moved)


def test_every_method_has_a_ddp_case() -> None:
    covered = {method for method, _ in CASES.values()}
    assert set(METHODS) <= covered, f"add a CASES entry for {sorted(set(METHODS) - covered)}"
