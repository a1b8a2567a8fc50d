"""Writing the evaluation report: ``metrics.json``, ``report.md``, ``report.html`` and the PNG
figures (accuracy bars, few-shot curves, confusion matrices, 2D embedding maps)."""

from __future__ import annotations

import html
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from acclimate.eval.pca import pca_project
from acclimate.eval.protocol import Features
from acclimate.eval.report.measure import ReportSettings
from acclimate.eval.report.sections import Block, labels, report_blocks
from acclimate.fileio import write_text_atomic

log = logging.getLogger(__name__)


def markdown(blocks: list[Block]) -> str:
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


STYLE = (
    "body{font-family:sans-serif;max-width:1000px;margin:2em auto}"
    "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;"
    "text-align:right}td:first-child,th:first-child{text-align:left}img{max-width:100%}"
)


def to_html(blocks: list[Block]) -> str:
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
    return (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>acclimate evaluation report'
        f"</title><style>{STYLE}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


def _scores(m: dict[str, Any]) -> dict[str, float]:
    """The bars of one model in the accuracy plot."""
    return {
        **{f"kNN k={k}": v for k, v in m["knn"].items()},
        "linear": m["linear_top1"],
        "macro-F1": m["macro_f1"],
        "balanced acc.": m["balanced_accuracy"],
        **({"source linear": m["forgetting"]["linear_top1"]} if "forgetting" in m else {}),
    }


def _figures(
    results: dict[str, Any], embeddings: dict[str, Features], out: Path, settings: ReportSettings
) -> dict[str, str]:
    from acclimate.eval import plots  # matplotlib: ImportError when it is missing

    models = results["models"]
    names = labels(list(models))
    figures = {}
    scores = {names[s]: _scores(m) for s, m in models.items()}
    figures["accuracy"] = plots.accuracy_bars(scores, out / "accuracy.png").name
    if all("fewshot" in m for m in models.values()):
        curves = {names[s]: m["fewshot"] for s, m in models.items()}
        figures["few_shot"] = plots.fewshot_curves(curves, out / "fewshot.png").name
    for i, (s, m) in enumerate(models.items()):
        title = f"{names[s]}: linear probe on test"
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
        title = f"{names[s]}: test embeddings, PCA"
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

    results: ``{"data": SRC, "settings": ReportSettings.to_dict(), "models": {MODEL:
    measure_features(...) + "description"}, ...}``; embeddings: ``{MODEL: (test features (N, D),
    labels (N,))}`` for the 2D maps. Plots are skipped with a warning when matplotlib is missing
    (``pip install acclimate[report]``).
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
    blocks = report_blocks(results, figures)
    paths = {
        "metrics": out / "metrics.json",
        "markdown": out / "report.md",
        "html": out / "report.html",
    }
    for key, text in (
        ("metrics", json.dumps(results, indent=2) + "\n"),
        ("markdown", markdown(blocks)),
        ("html", to_html(blocks)),
    ):
        write_text_atomic(paths[key], text)
    paths.update({k: out / v for k, v in figures.items()})
    return paths
