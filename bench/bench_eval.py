"""Evaluation speed: acclimate's feature extraction and probe fitting against plain loops.

Feature extraction: ``acclimate.eval.features.extract_features`` over ``eval_loader`` (what
``train``'s before/after, ``probe`` and ``evaluate`` run) against a plain loop that a user would
write: torchvision ``ImageFolder`` + ``DataLoader`` with the same workers and batch, the same
resize and normalisation, and ``timm`` ``model.forward_features`` + pooling under
``torch.inference_mode``. The two are timed alternately, ``--repeats`` times each, on the same
images, and their features are compared (they must agree).

Probe fitting: ``sweep_linear_probe`` (four weight decays on a validation split, then a refit:
five fits) and one ``train_linear_probe`` fit, against scikit-learn's ``LogisticRegression``
(lbfgs, one C) on the same standardised features, when scikit-learn is installed.

    python bench/bench_eval.py --data /tmp/acclimate-data/eurosat_rgb/train --images 5000

Not part of the tests.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _subset_source(data: str, n: int):
    from acclimate.data.sources import open_source

    src = open_source(data)
    if len(src) > n:
        step = len(src) / n
        src = src.subset([int(i * step) for i in range(n)])
    return src


def acclimate_features(model, source, size: int, mean, std, batch: int, workers: int):
    """(N, D) features through acclimate's evaluation path."""
    from acclimate.data.datamodule import eval_loader
    from acclimate.data.transforms import EvalTransform
    from acclimate.eval.features import extract_features

    tf = EvalTransform(size, mean, std)
    loader = eval_loader(source, tf, batch_size=batch, num_workers=workers)
    feats, _ = extract_features(model, loader, "pooled")
    return feats


def plain_features(model, files: list[str], size: int, mean, std, batch: int, workers: int):
    """(N, D) features through a plain torchvision + timm loop over the same files."""
    from PIL import Image
    from torchvision import transforms as T

    tf = T.Compose([T.Resize(size), T.CenterCrop(size), T.ToTensor(), T.Normalize(mean, std)])

    class Files(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(files)

        def __getitem__(self, i: int):
            with Image.open(files[i]) as im:
                return tf(im.convert("RGB"))

    loader = torch.utils.data.DataLoader(Files(), batch_size=batch, num_workers=workers)
    model.eval()
    out = []
    with torch.inference_mode():
        for x in loader:
            out.append(model(x))  # timm with num_classes=0: pooled features
    return torch.cat(out)


def _time(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    result = fn()
    return time.perf_counter() - t0, result


def bench_extraction(args: argparse.Namespace) -> tuple[list[str], torch.Tensor]:
    import timm

    source = _subset_source(args.data, args.images)
    files = [source.describe(i) for i in range(len(source))]
    model = timm.create_model(args.model, pretrained=False, num_classes=0)
    model.eval()
    cfg = timm.data.resolve_data_config({}, model=model)
    mean, std = tuple(cfg["mean"]), tuple(cfg["std"])
    ours, plain = [], []
    feats_a = feats_b = None
    for _ in range(args.repeats):  # alternate: both see the same load
        t, feats_a = _time(
            lambda: acclimate_features(
                model, source, args.size, mean, std, args.batch, args.workers
            )
        )
        ours.append(t)
        t, feats_b = _time(
            lambda: plain_features(model, files, args.size, mean, std, args.batch, args.workers)
        )
        plain.append(t)
    diff = float((feats_a - feats_b).abs().max() / feats_b.abs().max())
    n = len(files)
    a, b = statistics.median(ours), statistics.median(plain)
    return [
        f"| feature extraction, {n} images at {args.size} px ({args.model}) | "
        f"{n / b:.0f} images/s | {n / a:.0f} images/s | {b / a:.2f}x |",
        f"(max relative feature difference acclimate vs plain: {diff:.2e})",
    ], feats_a


def bench_probe(feats: torch.Tensor, labels: torch.Tensor, repeats: int) -> list[str]:
    from acclimate.eval.linear import train_linear_probe
    from acclimate.eval.sweep import sweep_linear_probe

    n_classes = int(labels.max()) + 1
    rows = []
    t_one = statistics.median(
        _time(lambda: train_linear_probe(feats, labels, n_classes, 1e-3))[0] for _ in range(repeats)
    )
    t_sweep = statistics.median(
        _time(lambda: sweep_linear_probe(feats, labels, n_classes))[0] for _ in range(repeats)
    )
    try:
        from sklearn.linear_model import LogisticRegression
    except ImportError:
        rows.append(f"| one probe fit | (scikit-learn not installed) | {t_one:.2f} s | - |")
    else:
        x = ((feats - feats.mean(0)) / feats.std(0).clamp_min(1e-6)).numpy()
        y = labels.numpy()

        def sk() -> object:
            return LogisticRegression(C=1.0, max_iter=300).fit(x, y)

        t_sk = statistics.median(_time(sk)[0] for _ in range(repeats))
        rows.append(
            f"| one probe fit, {len(y)} x {x.shape[1]} features, {n_classes} classes | "
            f"{t_sk:.2f} s (scikit-learn lbfgs) | {t_one:.2f} s | {t_sk / t_one:.2f}x |"
        )
    rows.append(
        f"| probe with its weight decay chosen (4 fits + refit) | - | {t_sweep:.2f} s | - |"
    )
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="a labelled class-folder source")
    p.add_argument("--images", type=int, default=5000)
    p.add_argument("--model", default="tf_efficientnet_lite0")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    torch.manual_seed(0)
    head = "| measurement | plain loop | acclimate | acclimate speed / plain |\n|---|---|---|---|"
    rows, feats = bench_extraction(args)
    source = _subset_source(args.data, args.images)
    labels = torch.as_tensor(source.labels[: len(feats)]).long()
    rows += bench_probe(feats, labels, args.repeats)
    print(head)
    print("\n".join(r for r in rows if r.startswith("|")))
    print("\n".join(r for r in rows if not r.startswith("|")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
