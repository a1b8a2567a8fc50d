"""fp32 versus bf16 autocast versus torch.compile (fp32): the time of a training step on CPU.

One step is a backbone forward + backward + AdamW step on a fixed batch of random images, with
a linear head and cross-entropy on fixed random labels; timm backbones with random weights.
The modes run interleaved (each round times one step of every mode, in a rotating order), so
that a machine whose load changes slows them alike; the table gives the median of ``--steps``
rounds after ``--warmup`` untimed ones (compilation happens there). CNNs run channels-last, as
``trainer.channels_last`` does; ``compile`` compiles as ``trainer.compile`` does
(`acclimate.ssl.compiled`).

The accuracy check runs before any step, on the same weights: the bf16 loss must be within
``--tolerance`` (1%) of the fp32 one (exit code 1 otherwise); the compiled loss is shown too.

    python bench/bench_precision.py          # EfficientNet-Lite0 64 px b64, ViT-S/16 96 px b32
    python bench/bench_precision.py --steps 2 --batch 4 --warmup 1   # a check that it runs
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from acclimate.backbones.layout import channels_last, has_convolutions, like_model
from acclimate.ssl.compiled import compile_networks

# (timm name, image size, batch size): the two shapes this is measured on
CASES = [("tf_efficientnet_lite0", 64, 64), ("vit_small_patch16_224", 96, 32)]
MODES = ("fp32", "bf16", "compile")
N_CLASSES = 10


@dataclass
class Runner:
    """One mode's copy of the network, its head and optimiser, and its timings (s)."""

    mode: str
    backbone: nn.Module
    head: nn.Module
    opt: torch.optim.Optimizer
    times: list[float] = field(default_factory=list)

    def precision(self) -> AbstractContextManager:
        """bf16 autocast for ``bf16``, full fp32 otherwise."""
        if self.mode == "bf16":
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return nullcontext()

    def loss(self, x: Tensor, labels: Tensor) -> Tensor:
        """x: (B, C, H, W), labels: (B,) -> the cross-entropy of the head on the features."""
        with self.precision():
            return F.cross_entropy(self.head(self.backbone(x)).float(), labels)

    def step(self, x: Tensor, labels: Tensor) -> float:
        """One forward + backward + AdamW step; returns its wall time in seconds."""
        t0 = time.perf_counter()
        self.loss(x, labels).backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t0


def build(name: str, size: int, modes: list[str]) -> list[Runner]:
    """A runner per mode, each on a copy of the same randomly initialised network."""
    torch.manual_seed(0)
    kwargs = {"img_size": size} if name.startswith("vit") else {}
    backbone = timm.create_model(name, pretrained=False, num_classes=0, **kwargs)
    if has_convolutions(backbone) and not isinstance(backbone, VisionTransformer):
        channels_last(backbone)  # a CNN; a ViT's one patch convolution gains nothing
    head = nn.Linear(backbone.num_features, N_CLASSES)
    runners = []
    for mode in modes:
        b, h = copy.deepcopy(backbone).train(), copy.deepcopy(head)
        if mode == "compile":
            compile_networks([b])
        params = [*b.parameters(), *h.parameters()]
        runners.append(Runner(mode, b, h, torch.optim.AdamW(params, lr=1e-4)))
    return runners


def fixed_batch(runner: Runner, size: int, batch: int) -> tuple[Tensor, Tensor]:
    """Random images (B, 3, size, size) in the network's layout and random labels (B,)."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 3, size, size, generator=g)
    return like_model(x, runner.backbone), torch.randint(0, N_CLASSES, (batch,), generator=g)


def accuracy(runners: list[Runner], x: Tensor, labels: Tensor) -> dict[str, float]:
    """Each mode's loss on the batch before any step (the same weights in every mode)."""
    with torch.no_grad():
        return {r.mode: r.loss(x, labels).item() for r in runners}


def interleave(runners: list[Runner], x: Tensor, labels: Tensor, warmup: int, steps: int) -> None:
    """``warmup`` untimed rounds, then ``steps`` timed ones; the mode order rotates."""
    for i in range(warmup + steps):
        k = i % len(runners)
        for r in runners[k:] + runners[:k]:
            seconds = r.step(x, labels)
            if i >= warmup:
                r.times.append(seconds)


def cpu_note() -> str:
    """The CPU's vector capability and whether it has native bf16 (``avx512_bf16``/AMX)."""
    cpuinfo = Path("/proc/cpuinfo")
    flags = cpuinfo.read_text().split() if cpuinfo.exists() else []
    native = [f for f in ("avx512_bf16", "amx_bf16") if f in flags]
    capability = torch.backends.cpu.get_cpu_capability()
    return f"{capability}, bf16: {', '.join(native) or 'no native support'}"


def table(rows: list[tuple], header: tuple[str, ...]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def speed_rows(name: str, size: int, batch: int, runners: list[Runner]) -> list[tuple]:
    """One row per mode: median step time, images/s and the ratio to fp32's time."""
    median = {r.mode: statistics.median(r.times) for r in runners}
    base = median.get("fp32")
    rows = []
    for r in runners:
        ratio = f"{base / median[r.mode]:.2f}x" if base else "-"
        rows.append(
            (
                name,
                size,
                batch,
                r.mode,
                f"{median[r.mode]:.3f}",
                f"{batch / median[r.mode]:.1f}",
                ratio,
            )
        )
    return rows


def accuracy_row(name: str, losses: dict[str, float], tolerance: float) -> tuple[tuple, bool]:
    """The losses, the relative differences to fp32 and whether bf16 is within tolerance."""
    ref = losses["fp32"]

    def rel(mode: str) -> float:
        return abs(losses[mode] - ref) / abs(ref)

    ok = "bf16" not in losses or rel("bf16") <= tolerance
    cells = [f"{m} {losses[m]:.5f} ({100 * rel(m):.3f}%)" for m in losses if m != "fp32"]
    return (name, f"{ref:.5f}", ", ".join(cells) or "-", "yes" if ok else "NO"), ok


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=10, help="timed rounds (the median is shown)")
    p.add_argument("--warmup", type=int, default=2, help="untimed rounds (compilation)")
    p.add_argument("--batch", type=int, default=None, help="override every case's batch size")
    p.add_argument("--models", default=None, help="comma-separated subset of the cases' models")
    p.add_argument("--modes", default=",".join(MODES), help=f"comma-separated subset of {MODES}")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch CPU threads")
    p.add_argument("--tolerance", type=float, default=0.01, help="bf16 loss vs fp32, relative")
    return p.parse_args()


def main() -> int:
    args = parse_args()
    torch.set_num_threads(args.threads)
    modes = [m for m in args.modes.split(",") if m]
    if "fp32" not in modes or any(m not in MODES for m in modes):
        raise SystemExit(f"--modes: a subset of {MODES} that includes fp32")
    chosen = args.models.split(",") if args.models else None
    speed, checks, all_ok = [], [], True
    for name, size, batch in CASES:
        if chosen is not None and name not in chosen:
            continue
        batch = args.batch or batch
        runners = build(name, size, modes)
        x, labels = fixed_batch(runners[0], size, batch)
        row, ok = accuracy_row(name, accuracy(runners, x, labels), args.tolerance)
        checks.append(row)
        all_ok &= ok
        interleave(runners, x, labels, args.warmup, args.steps)
        speed += speed_rows(name, size, batch, runners)
    print(f"torch {torch.__version__}, {args.threads} threads, {cpu_note()}\n")
    print(table(speed, ("model", "px", "batch", "mode", "step s", "images/s", "vs fp32")))
    limit = f"bf16 must be within {args.tolerance:.0%}"
    print(f"\nAccuracy before any step (relative to fp32; {limit}):\n")
    print(table(checks, ("model", "fp32 loss", "other modes", "bf16 ok")))
    return 0 if all_ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
