"""The content of the evaluation report, as a list of blocks that :mod:`.render` writes as
markdown and HTML: the summary, the probe's weight-decay choice, few-shot, retrieval, the
forgetting check, confusion matrices and plots."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from acclimate.eval.protocol import Protocol

Block = tuple[Any, ...]  # ("h1"|"h2"|"p", text) | ("table", header, rows) | ("img", file, alt)
Models = dict[str, dict[str, Any]]  # MODEL -> its report entry (measure_features + description)


def fmt(x: Any) -> str:
    return f"{x:.4f}" if isinstance(x, float) else str(x)


def _delta(x: float, ref: float) -> str:
    return f"{x - ref:+.4f}"


def labels(models: Sequence[str]) -> dict[str, str]:
    """Short, unique display names: the last path component of each MODEL."""
    out: dict[str, str] = {}
    for spec in models:
        name = Path(spec.rstrip("/")).name or spec
        out[spec] = name if name not in out.values() else f"{name} ({len(out) + 1})"
    return out


def _left_out_note(models: Models) -> str:
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


def _summary(results: dict[str, Any], names: dict[str, str]) -> list[Block]:
    models: Models = results["models"]
    ref_spec = next(iter(models))
    ref = models[ref_spec]
    ks = list(ref["knn"])
    record = dict(results.get("settings") or {})
    record.setdefault("features", results.get("features", "pooled"))
    described_protocol = Protocol.from_record(record).describe()
    header = ["model", *[f"kNN k={k}" for k in ks], "linear top-1", "Δ linear", "macro-F1"]
    rows = [
        [
            names[s],
            *[fmt(m["knn"][k]) for k in ks],
            fmt(m["linear_top1"]),
            _delta(m["linear_top1"], ref["linear_top1"]),
            fmt(m["macro_f1"]),
            fmt(m["balanced_accuracy"]),
        ]
        for s, m in models.items()
    ]
    intro = (
        f"Data: `{results['data']}`: {ref['n_train']} train / {ref['n_test']} test images, "
        f"{len(ref['classes'])} classes. {described_protocol[0].upper()}"
        f"{described_protocol[1:]}: the same protocol for every model. Reference (first "
        f"MODEL): `{names[ref_spec]}`; deltas are against it." + _left_out_note(models)
    )
    described = "; ".join(f"`{names[s]}` = {m.get('description', s)}" for s, m in models.items())
    return [
        ("h1", "acclimate evaluation report"),
        ("p", intro),
        ("h2", "Summary"),
        ("table", [*header, "balanced acc."], rows),
        ("p", "Model descriptions: " + described),
    ]


def _linear(models: Models, names: dict[str, str]) -> list[Block]:
    rows = [
        [
            names[s],
            f"{m['linear']['weight_decay']:g}",
            ", ".join(f"{wd}: {fmt(v)}" for wd, v in m["linear"]["val_top1"].items()),
            fmt(m["linear_top1"]),
        ]
        for s, m in models.items()
    ]
    header = ["model", "chosen weight decay", "validation top-1 per weight decay", "test top-1"]
    return [
        ("h2", "Linear probe: weight decay chosen on a validation split of train"),
        ("table", header, rows),
    ]


def _fewshot(models: Models, names: dict[str, str]) -> list[Block]:
    first = next(iter(models.values()))
    if "fewshot" not in first:
        return []
    shots = sorted(first["fewshot"], key=int)
    n_seeds = len(first["fewshot"][shots[0]]["runs"])
    rows = [
        [names[s]]
        + [f"{m['fewshot'][n]['mean']:.4f} ± {m['fewshot'][n]['std']:.4f}" for n in shots]
        for s, m in models.items()
    ]
    return [
        ("h2", f"Few-shot linear probe (mean ± std over {n_seeds} seeds)"),
        ("table", ["model", *[f"{n}-shot" for n in shots]], rows),
    ]


def _retrieval(models: Models, names: dict[str, str]) -> list[Block]:
    first = next(iter(models.values()))
    if "retrieval" not in first:
        return []
    keys = list(first["retrieval"])
    rows = [[names[s], *[fmt(m["retrieval"][k]) for k in keys]] for s, m in models.items()]
    return [
        ("h2", "Retrieval (test images query the train images; relevant = same class)"),
        ("table", ["model", *keys], rows),
    ]


def _forgetting(results: dict[str, Any], names: dict[str, str]) -> list[Block]:
    models: Models = results["models"]
    fref = next(iter(models.values())).get("forgetting")
    if not fref:
        return []
    rows = []
    for s, m in models.items():
        f = m["forgetting"]
        rows.append(
            [
                names[s],
                fmt(f["knn_top1"]),
                _delta(f["knn_top1"], fref["knn_top1"]),
                fmt(f["linear_top1"]),
                _delta(f["linear_top1"], fref["linear_top1"]),
                fmt(f["macro_f1"]),
            ]
        )
    return [
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
            rows,
        ),
    ]


def _confusions(models: Models, names: dict[str, str], figures: dict[str, str]) -> list[Block]:
    blocks: list[Block] = [("h2", "Confusion matrices (linear probe, test split)")]
    for i, (s, m) in enumerate(models.items()):
        if f"confusion_{i}" in figures:
            blocks.append(("img", figures[f"confusion_{i}"], f"confusion matrix of {names[s]}"))
            continue
        cls = m["classes"]
        rows = [[c, *map(str, r)] for c, r in zip(cls, m["linear"]["confusion"], strict=True)]
        blocks += [
            ("p", f"`{names[s]}` (rows: true, columns: predicted)"),
            ("table", ["", *cls], rows),
        ]
    return blocks


def report_blocks(results: dict[str, Any], figures: dict[str, str]) -> list[Block]:
    """The whole report. results: ``{"data", "models", "settings", ...}`` as ``acclimate
    evaluate`` writes them to ``metrics.json``; figures: {name: PNG file} (confusion_{i} and
    the plots)."""
    models: Models = results["models"]
    names = labels(list(models))
    blocks = _summary(results, names) + _linear(models, names)
    blocks += _fewshot(models, names) + _retrieval(models, names) + _forgetting(results, names)
    blocks += _confusions(models, names, figures)
    plots = [(k, v) for k, v in figures.items() if not k.startswith("confusion_")]
    if plots:
        blocks.append(("h2", "Plots"))
        blocks += [("img", f, k.replace("_", " ")) for k, f in plots]
    blocks.append(("p", "All numbers, per seed and per weight decay: `metrics.json`."))
    return blocks
