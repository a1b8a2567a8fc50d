"""What measuring adds to an export folder: linear probes (``acclimate probe``: ``fit_probe``)
and the headline numbers of ``acclimate evaluate`` (``record_evaluation``); both re-render the
model card. The figures come from the frozen-feature protocol (:mod:`acclimate.eval.protocol`),
the same as training's before/after."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from acclimate.eval.protocol import Protocol, labelled_splits, score_features, split_features
from acclimate.export.card import write_model_card
from acclimate.export.meta import META_FILE, read_export_meta, read_json
from acclimate.fileio import write_json_atomic


@dataclass
class FittedProbe:
    """A probe saved in an export folder: ``probes/NAME.safetensors`` + ``probes/NAME.json``."""

    name: str
    kind: str  # the feature kind it was fitted on
    metrics: dict[str, float]  # the protocol's (Scores.metrics)
    folder: Path  # the export's probes folder


def fit_probe(
    export_dir: str | Path,
    data: str,
    protocol: Protocol | None = None,
    name: str | None = None,
    features: str | None = None,
) -> FittedProbe:
    """Fit a linear probe on the export's frozen features of ``data``'s train split, scored on
    its held-out split, with the protocol (``protocol``: splits, image limits, probe's weight
    decays; its ``features`` are replaced by ``features``, default the export's own kind).

    Saves ``probes/NAME`` (NAME: ``name``, default the data folder's name), its JSON (feature
    kind, classes, data, metrics, protocol), adds the metrics to the export's ``metrics.json``
    under ``probes`` and re-renders the model card.
    """
    from acclimate.export.load import load
    from acclimate.preflight import check_writable_dir

    export_dir = Path(export_dir)
    ex = load(export_dir)
    protocol = replace(protocol or Protocol(), features=features or ex.feature_kind)
    probes = export_dir / "probes"
    check_writable_dir(probes, "export folder's probes folder", "fix it")
    train_src, test_src = labelled_splits(data, ex.channels, protocol, ex.options)
    train, test = split_features(ex.model, (train_src, test_src), ex.transform, protocol)
    metrics, probe = score_features(train, test, protocol, classes=train_src.classes)
    name = name or Path(str(data).rstrip("/")).stem
    probes.mkdir(exist_ok=True)
    probe.save(probes / f"{name}.safetensors")
    info = {
        "feature": protocol.features,
        "classes": train_src.classes,
        "data": str(data),
        "metrics": metrics,
        # the decay the saved probe was fitted with (chosen on the validation split), not the
        # protocol's tie-break preference
        "weight_decay": metrics.get("probe_weight_decay", protocol.probe_weight_decay),
        "protocol": protocol.as_record(),
    }
    write_json_atomic(probes / f"{name}.json", info)
    metrics_file = export_dir / "metrics.json"
    all_metrics = read_json(metrics_file) if metrics_file.is_file() else {}
    all_metrics.setdefault("probes", {})[name] = metrics
    write_json_atomic(metrics_file, all_metrics)
    write_model_card(export_dir)
    return FittedProbe(name, protocol.features, metrics, probes)


def record_evaluation(results: dict[str, Any], report: Path) -> None:
    """Put the headline numbers of every evaluated model (``acclimate evaluate``'s results) and
    the protocol into each evaluated export folder's ``acclimate.json``, and re-render its model
    card."""
    from acclimate.eval.report import headline

    summary = {
        "data": results["data"],
        "features": results["features"],
        "forgetting_data": results.get("forgetting_data"),
        "report": str(report.resolve()),
        "protocol": Protocol.from_record(results.get("settings")).as_record(),
        "models": {s: headline(m) for s, m in results["models"].items()},
    }
    for spec in results["models"]:
        meta_file = Path(spec) / META_FILE
        if meta_file.is_file():
            meta = read_export_meta(spec)
            meta["evaluation"] = {**summary, "this": spec}
            write_json_atomic(meta_file, meta)
            write_model_card(spec)
