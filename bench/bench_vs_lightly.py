"""DINO multi-crop throughput, acclimate versus lightly on the same config (issue 11's targets).

Config (both sides): timm ``tf_efficientnet_lite0`` with random weights, the EuroSAT sample
(``samples/eurosat/train``, 64 px JPEGs), 2 global crops of 64 px + 4 local crops of 32 px with
DINO's augmentations and default crop scales (acclimate: ``MultiCropTransform(preset="natural")``;
lightly: ``DINOTransform(global_crop_size=64, local_crop_size=32, n_local_views=4)``), ImageNet
normalisation, batch 64, DINO head 1024-256-2048, EMA teacher, AdamW, CPU. Precision
(``--precision``): ``auto`` by default, each side as its users run it (acclimate's
``trainer.precision: auto`` decides, `acclimate.precision`; lightly's example is float32), or
``32-true`` / ``bf16-mixed`` for both.

Measured, each in its own process (so that thread settings and caches do not leak):

* ``aug-*``: the multi-crop transform alone on pre-decoded images (lightly: PIL images,
  acclimate: uint8 tensors from its reader), 1 thread, no DataLoader -> images/s per core; and
  decode + transform (the dataset's ``__getitem__``), also 1 thread. acclimate's is the path its
  loader workers run: the per-image stage (crops, flips, random draws), collation and the
  per-batch photometric ops, batches of ``--batch``.
* ``e2e-*``: end-to-end training, DataLoader with ``--workers`` worker processes; throughput is
  measured between the end of warm-up step ``--warmup`` and the end of the last step
  (``--steps`` steps), all inside the first epoch. acclimate runs its real ``DINO`` module and
  ``SSLDataModule`` through the Lightning Trainer that ``acclimate train`` builds
  (``TrainerSettings.build``: gradient clipping 3.0, TensorBoard logger, LR monitor,
  checkpoint callback), with ``max_steps``; lightly runs the minimal loop of its DINO example
  (``lightly.loss.DINOLoss``, ``DINOProjectionHead``, ``update_momentum``, a ``forward`` per view).
  acclimate's process first does what ``acclimate train`` does, ``reuse_freed_memory`` (glibc
  malloc with no mmap and no trim, inherited by the loader's workers); lightly's keeps glibc's
  defaults unless ``--lightly-malloc reuse`` (a reference: the same setting on its loop).
  acclimate's networks get the layout ``acclimate train`` gives them (``TrainerSettings.lay_out``:
  channels-last for a CNN); lightly's example keeps PyTorch's default unless
  ``--lightly-layout channels-last`` (a reference: lightly's loop with that one line added).
  "data wait" is the time per step the training process spends between the end of one step and
  the start of the next (waiting for the loader, plus Lightning's bookkeeping for acclimate).
  "peak RSS" is the training process's own (``ru_maxrss``; the loader's workers not counted).
* ``fixed-all``: the training steps alone on one fixed pre-made batch of random crops (no data
  loading), in one process with the three steps interleaved step by step so that they see the
  same load: lightly's loop step, acclimate's DINO step through the hooks Lightning calls
  (schedules, ``training_step``, backward, clipping, ``optimizer_step`` + EMA; a stub instead
  of the Trainer, no logging) and a plain forward + backward + AdamW of the bare backbone on
  the same crops (one pass per crop size, channels-last for a CNN: the plain loop at its
  fastest): the "plain" step of the targets.

acclimate is trained with ``freeze_backbone_epochs=0`` and ``freeze_last_layer_epochs=0`` so that
it does the same work as lightly (its defaults freeze the backbone / prototype layer for the
first epoch); its other defaults stay (notably ``freeze_norm_stats: true``, BatchNorm in eval
mode; lightly's example trains BatchNorm statistics).

    pip install --no-deps lightly      # the `bench` extra, without hydra-core (omegaconf<2.4)
    python bench/bench_vs_lightly.py   # about 4 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[1]
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
HEAD = {"hidden_dim": 1024, "bottleneck_dim": 256, "out_dim": 2048}
SIDES = ("lightly", "acclimate")
PARTS = [
    "aug-lightly",
    "aug-acclimate",
    "e2e-lightly",
    "e2e-acclimate",
    "fixed-all",
]


def quiet() -> None:
    warnings.filterwarnings("ignore")
    logging.getLogger().setLevel(logging.ERROR)
    for name in ("acclimate", "lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)


# ----------------------------------------------------------------------------- augmentation


def lightly_transform(args: argparse.Namespace):
    from lightly.transforms import DINOTransform

    return DINOTransform(
        global_crop_size=args.global_size,
        local_crop_size=args.local_size,
        n_local_views=args.n_local,
        normalize={"mean": IMAGENET_MEAN, "std": IMAGENET_STD},
    )


def acclimate_transform(args: argparse.Namespace):
    from acclimate.data.transforms import MultiCropTransform

    return MultiCropTransform(
        global_size=args.global_size,
        local_size=args.local_size,
        n_local=args.n_local,
        preset="natural",
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
    )


def per_second(fn, items: list, warm: int = 10) -> float:
    for x in items[:warm]:
        fn(x)
    t0 = time.perf_counter()
    for x in items:
        fn(x)
    return len(items) / (time.perf_counter() - t0)


def aug(args: argparse.Namespace, side: str) -> dict:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    n = args.aug_images
    if side == "lightly":
        from PIL import Image
        from torchvision.datasets import ImageFolder

        folder = ImageFolder(str(ROOT / args.data), transform=lightly_transform(args))
        paths = [p for p, _ in folder.samples[:: max(len(folder) // n, 1)][:n]]
        images = [Image.open(p).convert("RGB") for p in paths]
        transform, dataset = folder.transform, folder
        indices = list(range(0, len(folder), max(len(folder) // n, 1)))[:n]
    else:
        from acclimate.data.dataset import ImageDataset
        from acclimate.data.sources import open_source

        source = open_source(str(ROOT / args.data))
        step = max(len(source) // n, 1)
        indices = list(range(0, len(source), step))[:n]
        images = [source.load(i) for i in indices]
        transform = acclimate_transform(args)
        dataset = ImageDataset(source, transform.sample)
        return {
            "transform_per_core": per_batch(transform, images, args.batch),
            "decode_transform_per_core": per_batch(
                transform, indices, args.batch, lambda i: dataset[i][0]
            ),
        }
    return {
        "transform_per_core": per_second(transform, images),
        "decode_transform_per_core": per_second(lambda i: dataset[i], indices),
    }


def per_batch(transform, items: list, batch: int, item: Callable | None = None) -> float:
    """acclimate's path in the loader: the per-image stage (crops, flips, random draws; decode
    too when ``item`` reads), collation, and the per-batch photometric stage on each batch."""
    from acclimate.data.datamodule import AugmentCollate

    collate = AugmentCollate(transform.batch)
    item = item or transform.sample

    def run(xs: list) -> None:
        collate([(item(x), 0) for x in xs])

    run(items[:batch])  # warm-up
    t0 = time.perf_counter()
    for start in range(0, len(items), batch):
        run(items[start : start + batch])
    return len(items) / (time.perf_counter() - t0)


# ----------------------------------------------------------------------------- models


def backbone(args: argparse.Namespace) -> nn.Module:
    from acclimate.backbones import create_backbone

    torch.manual_seed(0)
    return create_backbone(args.backbone)  # timm, num_classes=0, random weights


class LightlyDINO(nn.Module):
    """lightly's DINO example model (examples/pytorch/dino.py), with our head sizes."""

    def __init__(self, student: nn.Module, dim: int) -> None:
        import copy

        from lightly.models.modules import DINOProjectionHead
        from lightly.models.utils import deactivate_requires_grad

        super().__init__()
        self.student_backbone = student
        self.student_head = DINOProjectionHead(
            dim, HEAD["hidden_dim"], HEAD["bottleneck_dim"], HEAD["out_dim"]
        )
        self.teacher_backbone = copy.deepcopy(student)
        self.teacher_head = DINOProjectionHead(
            dim, HEAD["hidden_dim"], HEAD["bottleneck_dim"], HEAD["out_dim"]
        )
        deactivate_requires_grad(self.teacher_backbone)
        deactivate_requires_grad(self.teacher_head)

    def forward(self, x: Tensor) -> Tensor:
        return self.student_head(self.student_backbone(x).flatten(start_dim=1))

    def forward_teacher(self, x: Tensor) -> Tensor:
        return self.teacher_head(self.teacher_backbone(x).flatten(start_dim=1))


def _autocast(precision: str) -> torch.autocast:
    """bf16 autocast on the CPU for ``bf16-mixed`` (what Lightning's plugin does)."""
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16-mixed")


def lightly_precision(args: argparse.Namespace) -> str:
    """lightly's example trains in float32; ``--precision auto`` is acclimate's default only."""
    return "32-true" if args.precision == "auto" else args.precision


def acclimate_precision(args: argparse.Namespace, networks: list[nn.Module]) -> str:
    """What ``acclimate train`` trains ``networks`` at with ``trainer.precision=args.precision``."""
    from acclimate.trainer_settings import TrainerSettings

    settings = TrainerSettings(accelerator="cpu", precision=args.precision)
    return settings.for_networks(networks).precision


def lightly_step(args: argparse.Namespace, total: int):
    """One step of lightly's example loop, as a function of (views, step)."""
    from lightly.loss import DINOLoss
    from lightly.models.utils import update_momentum
    from lightly.utils.scheduler import cosine_schedule

    from acclimate.backbones import feature_dim

    net = backbone(args)
    model = LightlyDINO(net, feature_dim(net)).train()
    precision = lightly_precision(args)
    if args.lightly_layout == "channels-last":
        model.to(memory_format=torch.channels_last)
    criterion = DINOLoss(output_dim=HEAD["out_dim"], warmup_teacher_temp_epochs=0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.04)

    def step(views: list[Tensor], i: int) -> None:
        m = cosine_schedule(i, total, 0.996, 1)
        update_momentum(model.student_backbone, model.teacher_backbone, m=m)
        update_momentum(model.student_head, model.teacher_head, m=m)
        with _autocast(precision):
            teacher_out = [model.forward_teacher(v) for v in views[:2]]
            student_out = [model.forward(v) for v in views]
            loss = criterion(teacher_out, student_out, epoch=0)
        loss.backward()
        model.student_head.cancel_last_layer_gradients(current_epoch=0)
        optimizer.step()
        optimizer.zero_grad()

    return step


def lightly_loop(args: argparse.Namespace, batches) -> dict:
    """lightly's example loop; timestamps at the start and end of every step."""
    total = args.warmup + args.steps
    step = lightly_step(args, total)
    starts, ends = [], []
    it = iter(batches)
    for i in range(total):
        views = next(it)[0]
        starts.append(time.perf_counter())
        step(views, i)
        ends.append(time.perf_counter())
    return summarise(args, starts, ends) | {"precision": lightly_precision(args)}


def summarise(args: argparse.Namespace, starts: list[float], ends: list[float]) -> dict:
    w, n = args.warmup, args.steps
    span = ends[w + n - 1] - ends[w - 1]
    wait = sum(starts[i] - ends[i - 1] for i in range(w, w + n)) / n
    median = statistics.median(ends[i] - ends[i - 1] for i in range(w, w + n))
    return {
        "images_per_s": n * args.batch / span,
        "step_s": span / n,
        "median_images_per_s": args.batch / median,
        "wait_s": wait,
    }


class StepTimer:
    """A Lightning callback recording when every training batch starts and ends."""

    def __new__(cls):  # built lazily so that importing this file does not import Lightning
        import lightning.pytorch as pl

        class _Timer(pl.Callback):
            def __init__(self) -> None:
                self.starts: list[float] = []
                self.ends: list[float] = []

            def on_train_batch_start(self, *a, **k) -> None:  # noqa: ANN002, ANN003
                self.starts.append(time.perf_counter())

            def on_train_batch_end(self, *a, **k) -> None:  # noqa: ANN002, ANN003
                self.ends.append(time.perf_counter())

        return _Timer()


def acclimate_fit(args: argparse.Namespace, train_data: object) -> dict:
    """acclimate's DINO through the Trainer ``acclimate train`` builds, ``max_steps`` steps."""
    import lightning.pytorch as pl

    from acclimate.ssl import METHODS, OptimSettings
    from acclimate.trainer_settings import TrainerSettings

    pl.seed_everything(0, verbose=False)
    torch.set_float32_matmul_precision("high")
    optim = OptimSettings(freeze_backbone_epochs=0.0)  # train the backbone, as lightly does
    module = METHODS["dino"](
        backbone(args), batch_size=args.batch, optim=optim, freeze_last_layer_epochs=0.0, **HEAD
    )
    timer = StepTimer()
    settings = TrainerSettings(
        max_epochs=1,
        max_steps=args.warmup + args.steps,
        accelerator="cpu",
        devices=1,
        precision=acclimate_precision(args, module.networks()),
        progress_bar=False,
    )
    settings.lay_out(module)  # what `acclimate train` does before fitting
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = settings.build(Path(run_dir), [timer])
        trainer.fit(module, datamodule=train_data)
    return summarise(args, timer.starts, timer.ends) | {"precision": settings.precision}


def e2e(args: argparse.Namespace, side: str) -> dict:
    if side == "lightly":
        from torch.utils.data import DataLoader
        from torchvision.datasets import ImageFolder

        torch.manual_seed(0)
        dataset = ImageFolder(str(ROOT / args.data), transform=lightly_transform(args))
        loader = DataLoader(
            dataset,
            batch_size=args.batch,
            shuffle=True,
            drop_last=True,
            num_workers=args.workers,
            persistent_workers=args.workers > 0,
        )
        return lightly_loop(args, loader)
    from acclimate.data.datamodule import SSLDataModule

    dm = SSLDataModule(
        str(ROOT / "samples/eurosat"),
        train_split="train",
        channels=3,
        image_size=args.global_size,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        batch_size=args.batch,
        num_workers=args.workers,
    )
    dm.transform = acclimate_transform(args)
    return acclimate_fit(args, dm)


def fixed_views(args: argparse.Namespace) -> list[Tensor]:
    g = torch.Generator().manual_seed(0)
    b, gs, ls = args.batch, args.global_size, args.local_size
    globals_ = [torch.randn(b, 3, gs, gs, generator=g) for _ in range(2)]
    return globals_ + [torch.randn(b, 3, ls, ls, generator=g) for _ in range(args.n_local)]


def acclimate_step(args: argparse.Namespace, total: int):
    """One optimisation step of acclimate's DINO through the hooks Lightning calls
    (``on_train_batch_start`` schedules, ``training_step``, backward, ``on_after_backward``,
    gradient clipping at 3.0, ``optimizer_step`` with the EMA update), without the Trainer
    (a stub stands in for it; ``self.log`` is a no-op), as ``bench_methods.py`` does."""
    from types import SimpleNamespace

    from acclimate.ssl import METHODS, OptimSettings
    from acclimate.trainer_settings import TrainerSettings

    optim = OptimSettings(freeze_backbone_epochs=0.0)
    module = METHODS["dino"](
        backbone(args), batch_size=args.batch, optim=optim, freeze_last_layer_epochs=0.0, **HEAD
    ).train()
    TrainerSettings().lay_out(module)  # what `acclimate train` does before fitting
    precision = acclimate_precision(args, module.networks())
    trainer = SimpleNamespace(
        global_step=0,
        num_training_batches=total,
        estimated_stepping_batches=total,
        max_epochs=1,
        accumulate_grad_batches=1,
        world_size=1,
        optimizers=[],
    )
    module._trainer = trainer  # type: ignore[assignment]
    module.log = module.log_dict = lambda *a, **k: None  # type: ignore[method-assign]
    configured = module.configure_optimizers()
    optimizer, schedule = configured["optimizer"], configured["lr_scheduler"]["scheduler"]
    schedule.refresh()  # what on_train_start does
    trainer.optimizers = [optimizer]

    def step(views: list[Tensor], i: int) -> None:
        batch = ({"global": views[:2], "local": views[2:]}, None)
        trainer.global_step = i
        module.on_train_batch_start(batch, i)

        def closure() -> Tensor:
            optimizer.zero_grad(set_to_none=True)
            with _autocast(precision):
                loss = module.training_step(batch, i)
            loss.backward()
            module.on_after_backward()
            torch.nn.utils.clip_grad_norm_(module.parameters(), 3.0)
            return loss

        module.optimizer_step(0, i, optimizer, closure)
        schedule.step()  # what Lightning does after each optimiser step

    return step


def plain_step(args: argparse.Namespace, total: int):
    """Forward + backward + AdamW of the bare backbone on the crops, one pass per crop size."""
    from acclimate.ssl.dino import forward_by_size
    from acclimate.trainer_settings import TrainerSettings

    model = backbone(args).train()
    TrainerSettings().lay_out(model)  # channels-last for a CNN: a plain loop at its fastest
    precision = acclimate_precision(args, [model])  # the precision acclimate's step runs at
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step(views: list[Tensor], i: int) -> None:
        optimizer.zero_grad(set_to_none=True)
        with _autocast(precision):
            loss = forward_by_size(model, views).float().pow(2).mean()
        loss.backward()
        optimizer.step()

    return step


def fixed(args: argparse.Namespace, side: str) -> dict:
    """The three steps on one fixed batch, interleaved step by step (the same load for all)."""
    views = fixed_views(args)
    total = args.warmup + args.steps
    steps = {
        "lightly": lightly_step(args, total),
        "acclimate": acclimate_step(args, total),
        "plain": plain_step(args, total),
    }
    times: dict[str, list[float]] = {k: [] for k in steps}
    for i in range(total):
        for name, fn in steps.items():
            t0 = time.perf_counter()
            fn(views, i)
            if i >= args.warmup:
                times[name].append(time.perf_counter() - t0)
    out = {}
    for name, t in times.items():
        out[name] = {
            "images_per_s": args.batch * len(t) / sum(t),
            "step_s": sum(t) / len(t),
            "median_images_per_s": args.batch / statistics.median(t),
        }
    return out


# ----------------------------------------------------------------------------- driver


def run_part(args: argparse.Namespace) -> dict:
    quiet()
    kind, side = args.part.split("-", 1)
    if kind == "e2e" and (side == "acclimate" or args.lightly_malloc == "reuse"):
        from acclimate.malloc import reuse_freed_memory

        reuse_freed_memory()  # what `acclimate train` does first (glibc: no mmap, no trim)
    result = {"aug": aug, "e2e": e2e, "fixed": fixed}[kind](args, side)
    if kind == "e2e":  # this process trained; its loader workers are not counted
        result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbone", default="tf_efficientnet_lite0")
    p.add_argument("--data", default="samples/eurosat/train")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--global-size", type=int, default=64)
    p.add_argument("--local-size", type=int, default=32)
    p.add_argument("--n-local", type=int, default=4)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "32-true", "bf16-mixed"],
        help="both sides; auto: acclimate's default (acclimate.precision decides; lightly's "
        "example and the plain step: float32 / the same as acclimate's)",
    )
    p.add_argument(
        "--lightly-malloc",
        default="system",
        choices=["system", "reuse"],
        help="lightly's end-to-end run with glibc's defaults (what its users get) or with "
        "acclimate's setting (acclimate.malloc.reuse_freed_memory), as a reference",
    )
    p.add_argument(
        "--lightly-layout",
        default="default",
        choices=["default", "channels-last"],
        help="lightly's networks in PyTorch's default layout (its example) or channels-last, "
        "as a reference",
    )
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--steps", type=int, default=15, help="timed steps (end to end)")
    p.add_argument("--fixed-steps", type=int, default=8, help="timed steps (fixed batch)")
    p.add_argument("--aug-images", type=int, default=300)
    p.add_argument("--parts", nargs="+", default=PARTS, choices=PARTS)
    p.add_argument("--part", choices=PARTS, help=argparse.SUPPRESS)  # one part, in this process
    args = p.parse_args()
    if args.part:
        if args.part.startswith("fixed"):
            args.steps = args.fixed_steps
        print("RESULT " + json.dumps(run_part(args)), flush=True)
        return

    results: dict[str, dict] = {}
    for part in args.parts:
        cmd = [sys.executable, __file__, "--part", part] + [
            a for a in sys.argv[1:] if a != "--parts" and a not in PARTS
        ]
        t0 = time.perf_counter()
        out = subprocess.run(
            cmd, capture_output=True, text=True, cwd=ROOT, env={**os.environ}, check=False
        )
        lines = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
        if out.returncode or not lines:
            print(f"{part} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}", file=sys.stderr)
            continue
        result = json.loads(lines[-1][len("RESULT ") :])
        if part == "fixed-all":
            results.update({f"fixed-{k}": v for k, v in result.items()})
        else:
            results[part] = result
        print(f"# {part}: {result} ({time.perf_counter() - t0:.0f} s)", flush=True)
    report(args, results)


def report(args: argparse.Namespace, r: dict[str, dict]) -> None:
    def get(part: str, key: str) -> float | None:
        return r.get(part, {}).get(key)

    def fmt(v: float | None, spec: str = ".1f") -> str:
        return "-" if v is None else format(v, spec)

    print(
        f"\n{args.backbone}, random weights; batch {args.batch}; 2 x {args.global_size} px + "
        f"{args.n_local} x {args.local_size} px crops; {args.precision}, CPU, "
        f"{os.cpu_count()} cores; "
        f"{args.workers} loader workers end to end; {args.steps} steps timed after "
        f"{args.warmup} (fixed batch: {args.fixed_steps}); malloc end to end: acclimate reuse, "
        f"lightly {args.lightly_malloc}; lightly's layout: {args.lightly_layout}\n"
    )
    if "e2e-lightly" in r or "e2e-acclimate" in r:
        sides = [f"{s} {r.get(f'e2e-{s}', {}).get('precision', '-')}" for s in SIDES]
        print(f"precision end to end: {', '.join(sides)}\n")
    print("| measurement | lightly | acclimate | acclimate / lightly |")
    print("|---|---|---|---|")
    rows = [
        ("end to end, images/s", "e2e", "images_per_s", ".1f"),
        ("end to end, images/s of the median step", "e2e", "median_images_per_s", ".1f"),
        ("end to end, s/step", "e2e", "step_s", ".2f"),
        ("end to end, data wait s/step", "e2e", "wait_s", ".3f"),
        ("end to end, peak RSS of the training process (MB)", "e2e", "peak_rss_mb", ".0f"),
        ("fixed batch (no loading), images/s", "fixed", "images_per_s", ".1f"),
        ("fixed batch, images/s of the median step", "fixed", "median_images_per_s", ".1f"),
        ("fixed batch, s/step", "fixed", "step_s", ".2f"),
        ("augmentation alone, images/s per core", "aug", "transform_per_core", ".0f"),
        ("decode + augmentation, images/s per core", "aug", "decode_transform_per_core", ".0f"),
    ]
    for label, kind, key, spec in rows:
        lt, ac = get(f"{kind}-lightly", key), get(f"{kind}-acclimate", key)
        ratio = f"{ac / lt:.2f}x" if lt and ac else "-"
        print(f"| {label} | {fmt(lt, spec)} | {fmt(ac, spec)} | {ratio} |")
    plain = get("fixed-plain", "step_s")
    if plain:
        print(f"\nplain forward + backward + AdamW on the same crops: {plain:.2f} s/step")
        for side in ("lightly", "acclimate"):
            s = get(f"fixed-{side}", "step_s")
            if s:
                print(f"  {side} DINO step / plain: {s / plain:.2f}x")


if __name__ == "__main__":
    main()
