"""LoRA + last block versus full fine-tuning: step time, peak memory, optimizer-state memory.

Each configuration runs in its own process (so that peak RSS is its own): timm ViT with random
weights, AdamW, a backbone forward + backward + step on one batch of random images.

    python bench/bench_adapters.py                      # ViT-S and ViT-B, 160 px, batch 8
    python bench/bench_adapters.py --size 224 --models vit_small_patch16_224 --steps 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path


def _rss_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_one(model_name: str, mode: str, size: int, batch: int, steps: int, threads: int) -> dict:
    import timm
    import torch

    from acclimate.adapters import AdapterSettings, apply_adapter

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = timm.create_model(model_name, num_classes=0, img_size=size)
    if mode == "lora":  # ExPLoRA: LoRA r=8 on qkv of the frozen blocks, last block, norms
        settings = AdapterSettings(
            lora_rank=8, target_modules=("attn.qkv",), unfreeze_last_blocks=1, train_norms=True
        )
        report = apply_adapter(model, settings)
        trainable, total = report.trainable, report.total
    else:
        trainable = total = sum(p.numel() for p in model.parameters())
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    x = torch.randn(batch, 3, size, size)
    model.train()
    base_rss = _rss_mb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS
    times = []
    for i in range(steps + 1):
        t0 = time.perf_counter()
        loss = model(x).float().pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i:  # the first step allocates the optimizer state: not timed
            times.append(time.perf_counter() - t0)
    opt_bytes = sum(
        t.numel() * t.element_size()
        for state in opt.state.values()
        for t in state.values()
        if torch.is_tensor(t)
    )
    return {
        "model": model_name,
        "mode": mode,
        "size": size,
        "batch": batch,
        "trainable": trainable,
        "total": total,
        "step_s": statistics.median(times),
        "peak_rss_mb": _rss_mb("VmHWM"),
        "train_mem_mb": _rss_mb("VmHWM") - base_rss,
        "optimizer_state_mb": opt_bytes / 2**20,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["vit_small_patch16_224", "vit_base_patch16_224"])
    p.add_argument("--size", type=int, default=160)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--one", nargs=2, help=argparse.SUPPRESS)  # child: MODEL MODE
    args = p.parse_args()
    if args.one:
        result = run_one(*args.one, args.size, args.batch, args.steps, args.threads)
        print(json.dumps(result))
        return
    rows = []
    for model in args.models:
        for mode in ("full", "lora"):
            cmd = [sys.executable, __file__, "--one", model, mode, "--size", str(args.size)]
            cmd += ["--batch", str(args.batch), "--steps", str(args.steps)]
            cmd += ["--threads", str(args.threads)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
    print(f"batch {args.batch}, {args.size} px, {args.threads} threads, median of {args.steps}")
    print(
        "| model | mode | trainable / total | step (s) | peak RSS (MB) | "
        "training memory over model (MB) | optimizer state (MB) |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['model']} | {r['mode']} | {r['trainable'] / 1e6:.2f}M / {r['total'] / 1e6:.2f}M "
            f"({100 * r['trainable'] / r['total']:.1f}%) | {r['step_s']:.2f} | "
            f"{r['peak_rss_mb']:.0f} | {r['train_mem_mb']:.0f} | {r['optimizer_state_mb']:.1f} |"
        )
    for model in args.models:
        by_mode = {r["mode"]: r for r in rows if r["model"] == model}
        full, lora = by_mode["full"], by_mode["lora"]
        opt_ratio = lora["optimizer_state_mb"] / full["optimizer_state_mb"]
        print(
            f"{model}: optimizer state x{opt_ratio:.3f}"
            f" (trainable ratio {lora['trainable'] / full['trainable']:.3f}), step time "
            f"x{lora['step_s'] / full['step_s']:.2f}, peak RSS "
            f"x{lora['peak_rss_mb'] / full['peak_rss_mb']:.2f}"
        )


if __name__ == "__main__":
    main()
