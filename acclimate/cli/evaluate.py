"""``acclimate evaluate MODEL [MODEL ...] --data SRC``: the evaluation report of one or more
models (:mod:`acclimate.eval.report`), recorded in the export folders among them."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence
from typing import Any

from acclimate.cli.options import (
    FEATURES_HELP,
    UsageError,
    add_eval_args,
    add_model_args,
    feature_kind,
    protocol_args,
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    ev = sub.add_parser("evaluate", help="frozen-feature kNN + linear probe of one or more models")
    ev.add_argument(
        "models",
        nargs="+",
        metavar="MODEL",
        help="export folder, run folder, .ckpt, or timm name (with --weights)",
    )
    add_eval_args(ev)
    add_model_args(ev)
    ev.add_argument(
        "--out",
        default="evaluation",
        help="folder for report.md, report.html, metrics.json and the plots",
    )
    ev.add_argument(
        "--forgetting-data",
        metavar="SRC",
        help="labelled source-domain set (e.g. a slice of the pretraining domain): reports how "
        "much of what the backbone knew survived adaptation",
    )
    ev.add_argument(
        "--weight-decays",
        type=float,
        nargs="+",
        default=[1e-4, 1e-3, 1e-2, 1e-1],
        help="linear-probe L2 penalties tried; the best on a validation split of train is "
        "reported on test (ties go to --weight-decay)",
    )
    ev.add_argument(
        "--shots",
        type=int,
        nargs="+",
        default=[1, 5, 10],
        help="labelled images per class of the few-shot probes",
    )
    ev.add_argument(
        "--seeds",
        type=int,
        default=3,
        help="random draws per few-shot setting (raise for tighter error bars)",
    )
    ev.add_argument(
        "--features",
        type=feature_kind(),
        help=FEATURES_HELP + "the kind the exports, runs or checkpoints among the MODELs "
        "record, else pooled; every MODEL is measured on the same kind",
    )
    ev.add_argument("--no-plots", action="store_true", help="skip the PNG figures")
    ev.set_defaults(fn=run)


def _settings(args: argparse.Namespace, kind: str) -> Any:
    from acclimate.eval.report import ReportSettings

    try:
        return ReportSettings(
            **protocol_args(args),
            features=kind,
            probe_weight_decays=tuple(args.weight_decays),
            shots=tuple(args.shots),
            seeds=tuple(range(args.seeds)),
        )
    except ValueError as e:
        raise UsageError(f"{e} (--weight-decays, --shots, --seeds)") from None


def evaluation_kind(models: Sequence[str], given: str | None) -> str:
    """The one feature kind every MODEL is measured on: ``--features``, else the kind that the
    exports, runs and checkpoints among them record (pooled when none does)."""
    if given:
        return given
    from acclimate.export.load import recorded_features

    kinds = sorted({k for k in map(recorded_features, models) if k is not None})
    if len(kinds) > 1:
        raise UsageError(
            f"the MODELs record different feature kinds ({', '.join(kinds)}); choose the one "
            "to measure every model on with --features"
        )
    return kinds[0] if kinds else "pooled"


def like_recorded(specs: Sequence[str], resolved: list[Any], image_size: int | None) -> list[Any]:
    """Timm names among the MODELs (a start beside its export) read and normalise the images as
    the first export, run or checkpoint among them does, at its image size unless
    ``--image-size`` is given: training's before/after measures the start that way, and a
    comparison under two preprocessings would mix their difference into the delta."""
    pairs = list(zip(specs, resolved, strict=True))
    recorded = [r.run_info is not None or bool(r.metadata) for r in resolved]  # not timm names
    ref = next((p for p, rec in zip(pairs, recorded, strict=True) if rec), None)
    if ref is None:
        return resolved
    ref_spec, ref_r = ref
    out = []
    for r, rec in zip(resolved, recorded, strict=True):
        if not rec and len(r.mean) == len(ref_r.mean):
            r = dataclasses.replace(
                r,
                mean=ref_r.mean,
                std=ref_r.std,
                clip=ref_r.clip,
                options=ref_r.options,
                image_size=image_size or ref_r.image_size,
                description=f"{r.description}; preprocessing of {ref_spec}",
            )
        out.append(r)
    return out


def run(args: argparse.Namespace) -> int:
    from acclimate.data.transforms import EvalTransform
    from acclimate.eval.report import measure_model, write_report
    from acclimate.export.load import resolve_model
    from acclimate.export.probes import record_evaluation
    from acclimate.preflight import check_writable_dir

    check_writable_dir(args.out, "report folder", "choose another --out")
    kind = evaluation_kind(args.models, args.features)
    settings = _settings(args, kind)
    results: dict[str, Any] = {
        "data": str(args.data),
        "features": kind,
        "forgetting_data": args.forgetting_data,
        "settings": settings.to_dict(),
        "models": {},
    }
    embeddings = {}
    resolved = [
        resolve_model(s, weights=args.weights, image_size=args.image_size, in_chans=args.channels)
        for s in args.models
    ]
    resolved = like_recorded(args.models, resolved, args.image_size)
    for spec, r in zip(args.models, resolved, strict=True):
        tf = EvalTransform(r.image_size, r.mean, r.std, r.clip)
        metrics, embeddings[spec] = measure_model(
            r.model, tf, len(r.mean), args.data, settings, r.options, args.forgetting_data
        )
        results["models"][spec] = {
            "description": r.description,
            "preprocessing": {"image_size": r.image_size, "mean": r.mean, "std": r.std},
            **metrics,
        }
        print(
            f"{spec}: linear top-1 {metrics['linear_top1']:.4f}, kNN top-1 "
            f"{metrics['knn_top1']:.4f}, macro-F1 {metrics['macro_f1']:.4f} "
            f"({metrics['n_train']} train / {metrics['n_test']} test)"
        )
    paths = write_report(results, args.out, embeddings, settings, plots=not args.no_plots)
    record_evaluation(results, paths["markdown"])
    print(f"report: {paths['markdown']} and {paths['html']}; metrics: {paths['metrics']}")
    return 0
