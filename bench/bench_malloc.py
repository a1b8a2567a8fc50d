"""glibc malloc kept from returning freed memory, against glibc's defaults, on a training step.

With glibc's defaults a block above its mmap threshold (128 KiB at first, raised as mmapped
blocks are freed) gets its own ``mmap``, and free memory at the top of the heap goes back to the
kernel past the trim threshold: tensors of that size are then faulted in again page by page.
The "tuned" setting raises both thresholds (``GLIBC_TUNABLES``, no code and no ``LD_PRELOAD``):
mmap 32 MiB (glibc's maximum on 64-bit), trim 1 GiB, so freed blocks are reused. Blocks above
32 MiB (a CNN's activations at batch 128) are still mapped each time. The "reuse" setting is
what ``acclimate train`` and the CLI do (`acclimate.malloc.reuse_freed_memory`): no mmap at all,
no trim.

Each setting runs in its own process (malloc settings must precede the first allocation),
alternating default / tuned for ``--rounds`` rounds so both see the same load. A process builds
the backbone (random weights), then times forward + backward + AdamW steps on a fixed batch and
counts the minor page faults per step (``getrusage``). Faults do not depend on the machine's
load; times do. End to end, the same variable: ``GLIBC_TUNABLES=... bench/bench_vs_lightly.py``.

    python bench/bench_malloc.py           # Lite0 and ViT-S/16, batch 32, 96 px
    python bench/bench_malloc.py --models resnet50 --size 128 --rounds 3
    python bench/bench_malloc.py --models tf_efficientnet_lite0 --batch 128 --size 128
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

from acclimate.malloc import ENV

CHILD = """
import json, resource, statistics, sys, time, torch
from acclimate.backbones import create_backbone
from acclimate.malloc import reuse_freed_memory
if sys.argv[5] == "reuse":
    assert reuse_freed_memory()
name = sys.argv[1]
batch, size, steps = (int(a) for a in sys.argv[2:5])
torch.manual_seed(0)
model = create_backbone(name, weights=None).train()
opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
x = torch.randn(batch, 3, size, size)
def step():
    opt.zero_grad(set_to_none=True)
    model(x).float().pow(2).mean().backward()
    opt.step()
step()  # warm-up: first allocations, oneDNN primitives
times, faults = [], []
for _ in range(steps):
    f0, t0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
    step()
    times.append(time.perf_counter() - t0)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
med = statistics.median
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # GiB (Linux: KiB)
print(json.dumps({"s": med(times), "faults": med(faults), "rss": rss}))
"""


SETTINGS = ("default", "tuned", "reuse")
TUNED = "glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=1073741824"


def _child(model: str, args: argparse.Namespace, setting: str) -> dict:
    env = dict(os.environ)
    unset = ("GLIBC_TUNABLES", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", ENV)
    for k in unset:
        env.pop(k, None)
    if setting == "tuned":
        env["GLIBC_TUNABLES"] = TUNED
    sizes = [str(args.batch), str(args.size), str(args.steps)]
    cmd = [sys.executable, "-c", CHILD, model, *sizes, setting]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    models = ["tf_efficientnet_lite0", "vit_small_patch16_224"]
    p.add_argument("--models", nargs="+", default=models)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--size", type=int, default=96)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()
    print(
        "| model | setting | minor faults / step, per round | s / step, per round (median) "
        "| peak RSS GiB, per round |"
    )
    print("|---|---|---|---|---|")
    for model in args.models:
        res: dict[str, list[dict]] = {s: [] for s in SETTINGS}
        for _ in range(args.rounds):
            for setting in SETTINGS:
                res[setting].append(_child(model, args, setting))
        for setting, rows in res.items():
            faults = ", ".join(f"{r['faults']:.0f}" for r in rows)
            secs = ", ".join(f"{r['s']:.3f}" for r in rows)
            med = statistics.median(r["s"] for r in rows)
            rss = ", ".join(f"{r['rss']:.2f}" for r in rows)
            print(f"| {model} | {setting} | {faults} | {secs} ({med:.3f}) | {rss} |", flush=True)


if __name__ == "__main__":
    main()
