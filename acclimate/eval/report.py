"""The evaluation report of ``acclimate evaluate``: every model measured with one frozen-feature
protocol on cached features, written as ``metrics.json`` + ``report.md`` + ``report.html`` + PNGs.

Per model: weighted kNN (several k), a linear probe whose weight decay is chosen on a validation
split carved from the train split and reported once on test (top-1, macro-F1, balanced accuracy,
confusion matrix), few-shot linear probes (mean and spread over seeds), retrieval (recall@k,
mAP@k; test images query the train images), and optionally a forgetting check on a second,
source-domain labelled set. The first model is the reference the others are compared with.
"""

from __future__ import annotations

import html
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from acclimate.data.datamodule import eval_loader
from acclimate.data.sources import ImageSource
from acclimate.eval.features import (
    FeatureKind,
    extract_features_indexed,
    finite_rows,
    left_out,
)
from acclimate.eval.fewshot import fewshot_probe
from acclimate.eval.knn import knn_accuracy
from acclimate.eval.metrics import classification_metrics
from acclimate.eval.pca import pca_project
from acclimate.eval.retrieval import retrieval_metrics
from acclimate.eval.sweep import sweep_linear_probe
from acclimate.fileio import write_text_atomic

log = logging.getLogger(__name__)

Features = tuple[Tensor, Tensor]


class SplitFeatures(tuple):
    """(features (N, D), labels (N,)) of one split, as ``Features``, plus ``left_out``: the
    items of the split that have no row, {path: reason} (unreadable, nodata, too large, features
    not finite), which ``measure_features`` lists in the report's metrics."""

    left_out: dict[str, str]

    def __new__(
        cls, feats: Tensor, labels: Tensor, left_out: dict[str, str] | None = None
    ) -> SplitFeatures:
        self = super().__new__(cls, (feats, labels))
        self.left_out = dict(left_out or {})
        return self


@dataclass
class ReportSettings:
    """What the report measures.

    Args:
        knn_ks: neighbours of the weighted kNN (DINO reports k=10 and 20); the largest k is the
            headline ``knn_top1``.
        knn_temperature: kNN vote temperature (DINO: 0.07).
        weight_decays: linear-probe L2 penalties tried; the best on the validation split wins.
        prefer_weight_decay: tie-break (closest wins) and the few-shot probes' penalty.
        val_fraction: share of each class of the train split held out to choose the penalty.
        shots: labelled images per class of the few-shot probes.
        seeds: random draws per few-shot setting (mean and standard deviation are reported).
        retrieval_ks: cut-offs of recall@k and mAP@k.
        map_points: test images drawn (seed 0) on the 2D embedding maps.
    """

    knn_ks: Sequence[int] = (10, 20)
    knn_temperature: float = 0.07
    weight_decays: Sequence[float] = (1e-4, 1e-3, 1e-2, 1e-1)
    prefer_weight_decay: float = 1e-3
    val_fraction: float = 0.2
    shots: Sequence[int] = (1, 5, 10)
    seeds: Sequence[int] = (0, 1, 2)
    retrieval_ks: Sequence[int] = (1, 5, 10)
    map_points: int = 2000

    def __post_init__(self) -> None:
        for name in ("knn_ks", "weight_decays", "shots", "seeds", "retrieval_ks"):
            if len(getattr(self, name)) == 0:
                raise ValueError(f"{name} must not be empty")
        if min(self.knn_ks) < 1 or min(self.shots) < 1 or min(self.retrieval_ks) < 1:
            raise ValueError("knn_ks, shots and retrieval_ks must be positive")

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def measure_features(
    train: Features,
    test: Features,
    settings: ReportSettings,
    classes: Sequence[str] | None = None,
    fewshot: bool = True,
    retrieval: bool = True,
) -> dict[str, Any]:
    """Every report metric from cached features: train/test = (features (N, D), labels (N,))."""
    gone = {role: getattr(f, "left_out", {}) for role, f in (("train", train), ("test", test))}
    train, test = finite_rows(*train, "train"), finite_rows(*test, "test")
    (xtr, ytr), (xte, yte) = train, test
    n_classes = max(len(classes or []), int(max(ytr.max(), yte.max())) + 1)
    knn = {
        str(k): knn_accuracy(xtr, ytr, xte, yte, k, settings.knn_temperature)
        for k in settings.knn_ks
    }
    probe, sweep = sweep_linear_probe(
        xtr,
        ytr,
        n_classes,
        settings.weight_decays,
        settings.val_fraction,
        prefer=settings.prefer_weight_decay,
    )
    linear = {**classification_metrics(yte, probe.predict(xte), n_classes), **sweep}
    out: dict[str, Any] = {
        "knn_top1": knn[str(max(settings.knn_ks))],
        "linear_top1": linear["top1"],
        "macro_f1": linear["macro_f1"],
        "balanced_accuracy": linear["balanced_accuracy"],
        "n_train": int(len(ytr)),
        "n_test": int(len(yte)),
        "classes": list(classes or [str(i) for i in range(n_classes)]),
        "knn": knn,
        "linear": linear,
    }
    if fewshot:
        out["fewshot"] = fewshot_probe(
            train, test, n_classes, settings.shots, settings.seeds, settings.prefer_weight_decay
        )
    if retrieval:
        out["retrieval"] = retrieval_metrics(xtr, ytr, xte, yte, settings.retrieval_ks)
    if any(gone.values()):
        out["left_out"] = {role: items for role, items in gone.items() if items}
    return out


def split_features(
    model: nn.Module,
    sources: tuple[ImageSource, ImageSource],
    transform: Callable[[Any], Any],
    batch_size: int = 128,
    num_workers: int = 2,
    device: torch.device | str = "cpu",
    kind: FeatureKind = "pooled",
) -> tuple[Features, Features]:
    """Features of ``kind`` (pooled, cls, ``last{k}``) of a (train, test) pair of sources, with
    a progress bar; items without a row (unreadable, nodata, features not finite) are named in
    each split's ``left_out``."""
    model = model.to(device)
    out = []
    for src, role in zip(sources, ("train", "test"), strict=True):
        loader = eval_loader(src, transform, batch_size, num_workers)
        feats, labels, kept = extract_features_indexed(
            model, loader, kind, device=device, progress=True, desc=f"{role} feats"
        )
        out.append(SplitFeatures(feats, labels, left_out(loader, kept)))
    return out[0], out[1]


def headline(m: dict[str, Any]) -> dict[str, float]:
    """The few numbers a model card shows, from one model's report entry."""
    h = {
        "knn_top1": m["knn_top1"],
        "linear_top1": m["linear_top1"],
        "macro_f1": m["macro_f1"],
        "balanced_accuracy": m["balanced_accuracy"],
    }
    fs = m.get("fewshot") or {}
    if fs:
        mid = sorted(fs, key=int)[len(fs) // 2]
        h[f"{mid}shot_top1"] = fs[mid]["mean"]
    r = m.get("retrieval") or {}
    for key in ("recall@1", "map@10"):
        if key in r:
            h[key] = r[key]
    f = m.get("forgetting")
    if f:
        h["source_linear_top1"] = f["linear_top1"]
    return h


# ----------------------------------------------------------------------------- rendering

Block = tuple[Any, ...]  # ("h1"|"h2"|"p", text) | ("table", header, rows) | ("img", file, alt)


def _f(x: Any) -> str:
    return f"{x:.4f}" if isinstance(x, float) else str(x)


def _delta(x: float, ref: float) -> str:
    return f"{x - ref:+.4f}"


def _labels(models: Sequence[str]) -> dict[str, str]:
    """Short, unique display names: the last path component of each MODEL."""
    labels: dict[str, str] = {}
    for spec in models:
        name = Path(spec.rstrip("/")).name or spec
        labels[spec] = name if name not in labels.values() else f"{name} ({len(labels) + 1})"
    return labels


def _left_out_note(models: dict[str, dict[str, Any]]) -> str:
    """`` Left out: ...`` when images had no features (unreadable, nodata, not finite)."""
    parts = []
    for spec, m in models.items():
        gone = m.get("left_out") or {}
        if gone:
            counts = " / ".join(f"{len(v)} {role}" for role, v in gone.items())
            parts.append(f"{counts} image(s) for `{Path(spec.rstrip('/')).name or spec}`")
    if not parts:
        return ""
    return " Left out (listed in metrics.json under `left_out`): " + "; ".join(parts) + "."


def _blocks(results: dict[str, Any], figures: dict[str, str]) -> list[Block]:
    models: dict[str, dict[str, Any]] = results["models"]
    labels = _labels(list(models))
    ref_spec = next(iter(models))
    ref = first = models[ref_spec]
    ks = list(first["knn"])
    blocks: list[Block] = [
        ("h1", "acclimate evaluation report"),
        (
            "p",
            f"Data: `{results['data']}`: {first['n_train']} train / {first['n_test']} test "
            f"images, {len(first['classes'])} classes. Frozen "
            f"`{results.get('features', 'pooled')}` features, the same protocol "
            f"for every model. Reference (first MODEL): `{labels[ref_spec]}`; deltas are "
            "against it." + _left_out_note(models),
        ),
        ("h2", "Summary"),
        (
            "table",
            [
                "model",
                *[f"kNN k={k}" for k in ks],
                "linear top-1",
                "Δ linear",
                "macro-F1",
                "balanced acc.",
            ],
            [
                [
                    labels[s],
                    *[_f(m["knn"][k]) for k in ks],
                    _f(m["linear_top1"]),
                    _delta(m["linear_top1"], ref["linear_top1"]),
                    _f(m["macro_f1"]),
                    _f(m["balanced_accuracy"]),
                ]
                for s, m in models.items()
            ],
        ),
        (
            "p",
            "Model descriptions: "
            + "; ".join(f"`{labels[s]}` = {m.get('description', s)}" for s, m in models.items()),
        ),
        ("h2", "Linear probe: weight decay chosen on a validation split of train"),
        (
            "table",
            ["model", "chosen weight decay", "validation top-1 per weight decay", "test top-1"],
            [
                [
                    labels[s],
                    f"{m['linear']['weight_decay']:g}",
                    ", ".join(f"{wd}: {_f(v)}" for wd, v in m["linear"]["val_top1"].items()),
                    _f(m["linear_top1"]),
                ]
                for s, m in models.items()
            ],
        ),
    ]
    if "fewshot" in first:
        shots = sorted(first["fewshot"], key=int)
        n_seeds = len(first["fewshot"][shots[0]]["runs"])
        blocks += [
            ("h2", f"Few-shot linear probe (mean ± std over {n_seeds} seeds)"),
            (
                "table",
                ["model", *[f"{n}-shot" for n in shots]],
                [
                    [labels[s]]
                    + [
                        f"{m['fewshot'][n]['mean']:.4f} ± {m['fewshot'][n]['std']:.4f}"
                        for n in shots
                    ]
                    for s, m in models.items()
                ],
            ),
        ]
    if "retrieval" in first:
        keys = list(first["retrieval"])
        blocks += [
            ("h2", "Retrieval (test images query the train images; relevant = same class)"),
            (
                "table",
                ["model", *keys],
                [[labels[s], *[_f(m["retrieval"][k]) for k in keys]] for s, m in models.items()],
            ),
        ]
    if "forgetting" in first:
        fref = first["forgetting"]
        blocks += [
            ("h2", "Forgetting check on source-domain data"),
            (
                "p",
                f"Data: `{results.get('forgetting_data')}` ({fref['n_train']} train / "
                f"{fref['n_test']} test). A drop against the reference means the adapted "
                "backbone lost some of what it knew.",
            ),
            (
                "table",
                ["model", "kNN top-1", "Δ kNN", "linear top-1", "Δ linear", "macro-F1"],
                [
                    [
                        labels[s],
                        _f(m["forgetting"]["knn_top1"]),
                        _delta(m["forgetting"]["knn_top1"], fref["knn_top1"]),
                        _f(m["forgetting"]["linear_top1"]),
                        _delta(m["forgetting"]["linear_top1"], fref["linear_top1"]),
                        _f(m["forgetting"]["macro_f1"]),
                    ]
                    for s, m in models.items()
                ],
            ),
        ]
    blocks.append(("h2", "Confusion matrices (linear probe, test split)"))
    for i, (s, m) in enumerate(models.items()):
        if f"confusion_{i}" in figures:
            blocks.append(("img", figures[f"confusion_{i}"], f"confusion matrix of {labels[s]}"))
        else:
            cls = m["classes"]
            blocks.append(("p", f"`{labels[s]}` (rows: true, columns: predicted)"))
            blocks.append(
                (
                    "table",
                    ["", *cls],
                    [[c, *map(str, r)] for c, r in zip(cls, m["linear"]["confusion"], strict=True)],
                )
            )
    plots = [(k, v) for k, v in figures.items() if not k.startswith("confusion_")]
    if plots:
        blocks.append(("h2", "Plots"))
        blocks += [("img", f, k.replace("_", " ")) for k, f in plots]
    blocks.append(("p", "All numbers, per seed and per weight decay: `metrics.json`."))
    return blocks


def _markdown(blocks: list[Block]) -> str:
    lines: list[str] = []
    for b in blocks:
        if b[0] == "h1":
            lines += [f"# {b[1]}", ""]
        elif b[0] == "h2":
            lines += [f"## {b[1]}", ""]
        elif b[0] == "p":
            lines += [b[1], ""]
        elif b[0] == "img":
            lines += [f"![{b[2]}]({b[1]})", ""]
        elif b[0] == "table":
            lines.append("| " + " | ".join(b[1]) + " |")
            lines.append("|" + "---|" * len(b[1]))
            lines += ["| " + " | ".join(r) + " |" for r in b[2]]
            lines.append("")
    return "\n".join(lines)


def _inline(text: str) -> str:
    parts = html.escape(text).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def _html(blocks: list[Block]) -> str:
    body: list[str] = []
    for b in blocks:
        if b[0] in ("h1", "h2", "p"):
            body.append(f"<{b[0]}>{_inline(b[1])}</{b[0]}>")
        elif b[0] == "img":
            body.append(f'<p><img src="{html.escape(b[1])}" alt="{html.escape(b[2])}"></p>')
        elif b[0] == "table":
            head = "".join(f"<th>{_inline(h)}</th>" for h in b[1])
            rows = "".join(
                "<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in b[2]
            )
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
    style = (
        "body{font-family:sans-serif;max-width:1000px;margin:2em auto}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;"
        "text-align:right}td:first-child,th:first-child{text-align:left}img{max-width:100%}"
    )
    return (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>acclimate evaluation report'
        f"</title><style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


def _figures(
    results: dict[str, Any], embeddings: dict[str, Features], out: Path, settings: ReportSettings
) -> dict[str, str]:
    from acclimate.eval import plots

    models = results["models"]
    labels = _labels(list(models))
    figures = {}
    scores = {
        labels[s]: {
            **{f"kNN k={k}": v for k, v in m["knn"].items()},
            "linear": m["linear_top1"],
            "macro-F1": m["macro_f1"],
            "balanced acc.": m["balanced_accuracy"],
            **({"source linear": m["forgetting"]["linear_top1"]} if "forgetting" in m else {}),
        }
        for s, m in models.items()
    }
    figures["accuracy"] = plots.accuracy_bars(scores, out / "accuracy.png").name
    if all("fewshot" in m for m in models.values()):
        curves = {labels[s]: m["fewshot"] for s, m in models.items()}
        figures["few_shot"] = plots.fewshot_curves(curves, out / "fewshot.png").name
    for i, (s, m) in enumerate(models.items()):
        title = f"{labels[s]}: linear probe on test"
        path = plots.confusion_plot(
            m["linear"]["confusion"], m["classes"], title, out / f"confusion_{i}.png"
        )
        figures[f"confusion_{i}"] = path.name
    for i, s in enumerate(models):
        if s not in embeddings:
            continue
        x, y = embeddings[s]
        if len(y) > settings.map_points:
            keep = np.sort(np.random.default_rng(0).choice(len(y), settings.map_points, False))
            x, y = x[keep], y[keep]
        pts = pca_project(x, 2).numpy()
        title = f"{labels[s]}: test embeddings, PCA"
        path = plots.embedding_map(
            pts, y.numpy(), models[s]["classes"], title, out / f"embedding_{i}.png"
        )
        figures[f"embedding_map_{i}"] = path.name
    return figures


def write_report(
    results: dict[str, Any],
    out: str | Path,
    embeddings: dict[str, Features] | None = None,
    settings: ReportSettings | None = None,
    plots: bool = True,
) -> dict[str, Path]:
    """Write ``metrics.json``, ``report.md``, ``report.html`` and the PNGs into ``out``.

    results: ``{"data": SRC, "models": {MODEL: measure_features(...) + "description"}, ...}``;
    embeddings: ``{MODEL: (test features (N, D), labels (N,))}`` for the 2D maps. Plots are
    skipped with a warning when matplotlib is missing (``pip install acclimate[report]``).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    settings = settings or ReportSettings()
    figures: dict[str, str] = {}
    if plots:
        try:
            figures = _figures(results, embeddings or {}, out, settings)
        except ImportError:
            log.warning("matplotlib is not installed: no plots (pip install acclimate[report])")
    blocks = _blocks(results, figures)
    paths = {
        "metrics": out / "metrics.json",
        "markdown": out / "report.md",
        "html": out / "report.html",
    }
    for key, text in (
        ("metrics", json.dumps(results, indent=2) + "\n"),
        ("markdown", _markdown(blocks)),
        ("html", _html(blocks)),
    ):
        write_text_atomic(paths[key], text)
    paths.update({k: out / v for k, v in figures.items()})
    return paths
