"""Quality benchmark: does adaptation pay, per recipe and domain, under a fixed time budget?

For each recipe x domain: train with ``trainer.max_time=BUDGET`` through ``acclimate.train`` (the
CLI's path), then measure the starting backbone and the export with ``acclimate evaluate``'s
protocol (linear probe with its weight decay chosen on a validation split, weighted kNN), on the
domain's held-out split and on a labelled set of another domain (forgetting). Prints a Markdown
table and saves every figure as JSON into ``--out``, where a row replaces the row of the same
recipe and domain and the other rows stay.

    mkdir -p /tmp/acclimate-data
    for f in ../shared/data/*.tar.gz; do tar xzf $f -C /tmp/acclimate-data; done
    python bench/bench_quality.py --data-root /tmp/acclimate-data --budget 00:00:30:00 \\
        --recipes preset --domains eurosat ucmerced bccd --out bench/quality.json

``--recipes preset`` (the default) runs each domain with its preset's recipe,
``recipes/PRESET/efficientnet_lite0.yaml``; name recipe files to run each of them on every domain.

A wall-clock budget measures the machine as much as the recipe (the same preset fitted 812 steps on
one VM and 546 on a slower one), so every row also records ``reference_step_s``: the median time of
one training step of a fixed network on the same machine, timed before and after the run, with the
load average then (other processes slow it too), the CPU model and the commit. Compare rows whose
reference times agree; it catches contention, not every way two VMs differ (a BCCD DINO step took
2.9 s on a VM where the reference read 0.19 s), so compare the steps that fitted too.

Not part of the tests. Other domains: ``--domain NAME=SRC:TRAIN:TEST:PRESET:SIZE``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Domain:
    name: str
    source: str  # relative to --data-root unless absolute
    train_split: str
    test_split: str
    preset: str
    image_size: int


DOMAINS = {
    "eurosat": Domain("eurosat", "eurosat_rgb", "train", "valid", "satellite", 64),
    "ucmerced": Domain("ucmerced", "ucmerced_landuse", "train", "test", "satellite", 128),
    "bccd": Domain("bccd", "bccd_wbc4", "train", "test", "microscopy", 128),
    "mednist": Domain("mednist", "mednist_subset/split.csv", "train", "val", "medical", 64),
}
# forgetting: each domain is checked on another domain's labelled set
FORGETTING = {"eurosat": "ucmerced", "ucmerced": "eurosat", "bccd": "eurosat", "mednist": "eurosat"}


def reference_step_s(steps: int = 8, warmup: int = 2) -> float:
    """Median seconds of one fp32 training step (forward, backward, SGD update) of a randomly
    initialised ``tf_efficientnet_lite0`` on a batch of 32 RGB images of 64 x 64 px, on the threads
    torch uses here: a yardstick of the machine that no recipe or data changes."""
    import timm
    import torch

    torch.manual_seed(0)
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=10)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(32, 3, 64, 64), torch.randint(0, 10, (32,))
    times = []
    for i in range(warmup + steps):
        t = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        if i >= warmup:
            times.append(time.perf_counter() - t)
    return round(statistics.median(times), 4)


def _load() -> float | None:
    """The 1-minute load average (None where the system has none): a reference step timed while
    other processes run reads slow, and this says so."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def machine() -> dict:
    """Where a row was measured: CPU model, torch threads and the commit (``+dirty`` if edited)."""
    import torch

    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [
            ln.split(":", 1)[1].strip()
            for ln in cpuinfo.read_text().splitlines()
            if ln.startswith("model name")
        ]
        cpu = names[0] if names else cpu

    def git(*a: str) -> str:
        r = subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True, check=False)
        return r.stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    if git("status", "--porcelain", "--untracked-files=no"):
        commit += "+dirty"
    return {"cpu": cpu, "torch_threads": torch.get_num_threads(), "commit": commit}


def preset_recipe(domain: Domain) -> str:
    """The recipe that acclimate ships for the domain's kind of data."""
    path = ROOT / "recipes" / domain.preset / "efficientnet_lite0.yaml"
    if not path.is_file():
        raise SystemExit(f"{path}: no recipe for preset {domain.preset!r}; pass --recipes FILE")
    return str(path)


def _evaluate(models: list[str], weights: str, domain: Domain, root: Path, out: Path) -> dict:
    from acclimate.cli import main

    src = str(root / domain.source)
    args = ["evaluate", *models, "--weights", weights, "--data", src, "--out", str(out)]
    args += ["--train-split", domain.train_split, "--test-split", domain.test_split]
    args += ["--image-size", str(domain.image_size), "--no-plots", "--shots", "10"]
    args += ["--seeds", "1", "--max-images", "5000"]
    if main(args) != 0:
        raise SystemExit(f"evaluate failed on {domain.name}")
    return json.loads((out / "metrics.json").read_text())["models"]


def run_one(recipe: str, domain: Domain, root: Path, budget: str, work: Path) -> dict:
    import acclimate
    from acclimate.config import load_recipe

    src = str(root / domain.source)
    overrides = {
        "data": {
            "train": src,
            "train_split": domain.train_split,
            "image_size": domain.image_size,
        },
        "augment": {"preset": domain.preset},
        "eval": {
            "data": src,
            "train_split": domain.train_split,
            "test_split": domain.test_split,
            "every_n_epochs": 0,
        },
        "trainer": {"max_time": budget, "progress_bar": False},
    }
    run_dir = work / f"{Path(recipe).stem}-{domain.name}"
    ref_before, load_before = reference_step_s(), _load()
    start = time.monotonic()
    run = acclimate.train(recipe, run_dir=run_dir, **overrides)
    wall = time.monotonic() - start
    ref_after, load_after = reference_step_s(), _load()
    import torch

    saved = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    backbone = load_recipe(recipe).data["backbone"]
    start_model, weights = backbone["name"], backbone["weights"]
    on_domain = _evaluate([start_model, str(run.export)], weights, domain, root, work / "eval")
    other = DOMAINS[FORGETTING[domain.name]]
    forget = _evaluate([start_model, str(run.export)], weights, other, root, work / "forget")
    b, a = on_domain[start_model], on_domain[str(run.export)]
    fb, fa = forget[start_model], forget[str(run.export)]
    return {
        "recipe": recipe,
        "domain": domain.name,
        "budget": budget,
        "wall_s": round(wall),
        "steps": int(saved["global_step"]),
        "before": {k: b[k] for k in ("linear_top1", "knn_top1")},
        "after": {k: a[k] for k in ("linear_top1", "knn_top1")},
        "delta": {k: a[k] - b[k] for k in ("linear_top1", "knn_top1")},
        "forgetting_domain": other.name,
        "forgetting": {k: fa[k] - fb[k] for k in ("linear_top1", "knn_top1")},
        "training_own_before_after": run.metrics.get("delta"),
        "reference_step_s": {"before": ref_before, "after": ref_after},
        "load_avg_1min": {"before": load_before, "after": load_after},  # others' work slows it too
        "machine": machine(),
    }


def table(rows: list[dict]) -> str:
    head = (
        "| recipe | domain | budget (wall s, steps) | reference step s | linear before -> after "
        "(delta) | kNN before -> after (delta) | forgetting linear / kNN |\n"
        "|---|---|---|---|---|---|---|"
    )
    lines = [head]
    for r in rows:
        b, a, d, f = r["before"], r["after"], r["delta"], r["forgetting"]
        ref = r.get("reference_step_s")  # rows saved before 2026-12-07 have none
        ref_text = f"{ref['before']:.3f} / {ref['after']:.3f}" if ref else "-"
        lines.append(
            f"| {Path(r['recipe']).name} | {r['domain']} | {r['budget']} ({r['wall_s']} s, "
            f"{r['steps']}) | {ref_text} | {b['linear_top1']:.4f} -> {a['linear_top1']:.4f} "
            f"({d['linear_top1']:+.4f}) | {b['knn_top1']:.4f} -> {a['knn_top1']:.4f} "
            f"({d['knn_top1']:+.4f}) | {f['linear_top1']:+.4f} / {f['knn_top1']:+.4f} "
            f"({r['forgetting_domain']}) |"
        )
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-root", type=Path, required=True)
    p.add_argument("--recipes", nargs="+", default=["preset"], help="recipe files, or 'preset'")
    p.add_argument("--domains", nargs="*", default=list(DOMAINS))
    p.add_argument("--domain", action="append", default=[], help="NAME=SRC:TRAIN:TEST:PRESET:SIZE")
    p.add_argument("--budget", default="00:00:30:00")
    p.add_argument("--work", type=Path, default=Path("/tmp/acclimate-bench-quality"))
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "quality.json")
    args = p.parse_args()
    for spec in args.domain:
        name, rest = spec.split("=", 1)
        source, train, test, preset, size = rest.split(":")
        DOMAINS[name] = Domain(name, source, train, test, preset, int(size))
        FORGETTING.setdefault(name, "eurosat")
        args.domains.append(name)
    rows = []
    for recipe_arg in args.recipes:
        for name in args.domains:
            recipe = preset_recipe(DOMAINS[name]) if recipe_arg == "preset" else recipe_arg
            work = args.work / f"{Path(recipe).stem}-{name}-{time.strftime('%H%M%S')}"
            rows.append(run_one(recipe, DOMAINS[name], args.data_root, args.budget, work))
            save(args.out, rows)
            print(table(rows), flush=True)
    print(table(rows))
    return 0


def _key(row: dict) -> tuple[str, str]:
    """A row's identity: its recipe file (relative to the repository) and its domain."""
    recipe = Path(row["recipe"])
    if recipe.is_absolute() and recipe.is_relative_to(ROOT):
        recipe = recipe.relative_to(ROOT)
    return str(recipe), row["domain"]


def save(out: Path, rows: list[dict]) -> None:
    """Write ``rows`` into ``out``, replacing the rows of the same recipe and domain and keeping
    every other row already there (a run of one domain must not erase the others' figures)."""
    kept = json.loads(out.read_text())["rows"] if out.is_file() else []
    new = {_key(r) for r in rows}
    merged = [r for r in kept if _key(r) not in new] + rows
    domains = {k: asdict(v) for k, v in DOMAINS.items()}
    out.write_text(json.dumps({"rows": merged, "domains": domains}, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
