"""The one-call Python API: ``acclimate.train(recipe, **overrides)``, the same path as
``acclimate train`` followed by ``acclimate export``."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


@dataclass
class Run:
    """A finished run: its folder, its metrics (``metrics.json``) and its export folder."""

    folder: Path
    metrics: dict[str, Any] = field(default_factory=dict)
    export: Path | None = None

    def summary(self) -> str:
        """One line: linear probe and kNN before -> after."""
        from acclimate.evidence import summarize

        return summarize(self.metrics)


def as_overrides(overrides: dict[str, Any]) -> list[str]:
    """``{"trainer": {"max_epochs": 2}, "optim.lr": 1e-3}`` -> ``["trainer.max_epochs=2",
    "optim.lr=0.001"]``; values are written as YAML (JSON is YAML: null, true, [1, 2])."""
    out: list[str] = []

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict) and value:
            for k, v in value.items():
                walk(f"{prefix}.{k}", v)
        else:
            out.append(f"{prefix}={json.dumps(value)}")

    for key, value in overrides.items():
        walk(key, value)
    return out


def export_run(
    run: str | Path,
    out: str | Path,
    student: bool = False,
    features: str | None = None,
    start_blend: float | None = None,
) -> Path:
    """Export a run folder or checkpoint (its newest checkpoint; the EMA teacher unless
    ``student``) to a timm-loadable folder with the run's metrics; returns the folder.
    ``features``: the feature kind recorded for probes and evaluation (default: the run's
    ``eval.features``). ``start_blend``: the exported weights are ``start + start_blend *
    (adapted - start)`` (WiSE-FT, `acclimate.export.blend`; default: the run's
    ``export.start_blend``, 1 for runs that predate it); the start is rebuilt from the run's
    ``backbone:`` section."""
    from acclimate.backbones import create_backbone
    from acclimate.errors import AcclimateError
    from acclimate.export.artifact import export_backbone
    from acclimate.export.blend import blend_with_start, start_state
    from acclimate.export.load import resolve_model
    from acclimate.export.meta import read_json

    resolved = resolve_model(run, which="student" if student else "teacher")
    info = resolved.run_info
    if start_blend is not None and not 0.0 <= start_blend <= 1.0:
        raise AcclimateError(f"start_blend must be in [0, 1], got {start_blend}")
    if info is None and start_blend not in (None, 1.0):
        raise AcclimateError(
            f"{run}: an export folder; blend a run folder or checkpoint with its start"
        )
    if info is not None:
        if start_blend is None:
            start_blend = float(((resolved.recipe or {}).get("export") or {}).get("start_blend", 1))
        if start_blend != 1.0:
            section = resolved.start or {}
            if section.get("weights") is None:
                raise AcclimateError(
                    f"{run}: trained from random weights (backbone.weights: null): there is no "
                    "start to blend with; export without a start blend"
                )
            start = start_state(create_backbone(**section))
            blend_with_start(resolved.model, start, start_blend)
    meta = resolved.metadata if info is None else {}  # another export: its acclimate.json
    run = Path(run)
    run_dir = run if run.is_dir() else run.parent.parent
    metrics_file = run_dir / "metrics.json"
    metrics = read_json(metrics_file) if metrics_file.is_file() else {}
    if info is not None:
        keep = 1.0 if start_blend is None else start_blend
        metrics = _evidence_for(metrics, resolved.trained or {}, keep, run)
    return export_backbone(
        resolved.model,
        out,
        mean=resolved.mean,
        std=resolved.std,
        image_size=resolved.image_size,
        recipe=resolved.recipe,
        metrics=metrics,
        source=resolved.description,
        bands=meta.get("bands") if info is None else info.bands,
        statistics=meta.get("statistics") if info is None else info.statistics,
        clip=meta.get("clip") if info is None or info.clip is None else info.clip.to_dict(),
        features=features or resolved.features or "pooled",
        reader=meta.get("reader") if info is None else info.reader.to_dict(),
        start_blend=meta.get("start_blend", 1.0) if info is None else start_blend,
    )


def _evidence_for(
    metrics: dict[str, Any], exported: dict[str, Any], keep: float, run: Path
) -> dict[str, Any]:
    """The run's metrics for an export of ``exported`` (``{"network", "step"}``) blended at
    ``keep``: its after-evaluation (``after``, ``delta``) only if it measured these weights, the
    same network at the same step with the same blend; otherwise without them, and a warning.
    Runs from before ``after_of`` was recorded measured the default export's network."""
    if "after" not in metrics:
        return metrics
    measured = metrics.get("after_of") or {"network": exported.get("default")}
    differs = []
    if measured.get("network") != exported.get("network"):
        differs.append(f"the {measured['network']}, not the {exported['network']}")
    if measured.get("step", exported.get("step")) != exported.get("step"):
        differs.append(f"step {measured['step']}, not {exported['step']}")
    if float(metrics.get("start_blend", 1.0)) != keep:
        differs.append(f"start blend {metrics.get('start_blend', 1.0):g}, not {keep:g}")
    if not differs:
        return metrics
    log.warning(
        "%s: the run's after-evaluation measured %s: its before -> after figures are left out of "
        "this export (measure it with `acclimate evaluate`)",
        run,
        "; ".join(differs),
    )
    kept = {k: v for k, v in metrics.items() if k not in ("after", "delta", "after_of")}
    return {**kept, "after_left_out": "; ".join(differs)}


def train(
    recipe: str | Path,
    run_dir: str | Path | None = None,
    export: bool = True,
    resume: bool = False,
    **overrides: Any,
) -> Run:
    """Train a recipe end to end (before/after evidence included) and export the result.

    ``overrides`` are recipe keys, nested or dotted: ``acclimate.train("recipes/demo.yaml",
    trainer={"max_epochs": 2}, **{"optim.lr": 1e-3})``. With ``resume``, ``recipe`` is the run
    folder to continue. The export goes to ``RUN/export`` (rank 0 only under DDP).
    """
    from acclimate.config import load_recipe
    from acclimate.training import check_resumable, resume_recipe
    from acclimate.training import train as run_training

    dotted = as_overrides(overrides)
    if resume:
        check_resumable(recipe)
        folder, metrics = run_training(resume_recipe(recipe, dotted), recipe, resume=True)
    else:
        folder, metrics = run_training(load_recipe(recipe, dotted), run_dir)
    done = Run(Path(folder), metrics)
    if export and int(os.environ.get("LOCAL_RANK", "0")) == 0:
        done.export = export_run(folder, Path(folder) / "export")
    return done
