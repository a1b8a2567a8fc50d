"""``acclimate export RUN_OR_CKPT --out DIR [--onnx]``: a timm-loadable export folder."""

from __future__ import annotations

import argparse

from acclimate.cli.options import FEATURES_HELP, UsageError, feature_kind


def add_parser(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser("export", help="write a timm-loadable export folder from a run")
    e.add_argument("run", help="run folder or .ckpt checkpoint")
    e.add_argument("--out", required=True, help="export folder to write")
    e.add_argument(
        "--student", action="store_true", help="export the student instead of the EMA teacher"
    )
    e.add_argument(
        "--onnx",
        action="store_true",
        help="also write model.onnx (preprocessed images -> the export's features, dynamic "
        "batch), checked against PyTorch with onnxruntime; needs acclimate[onnx]",
    )
    e.add_argument(
        "--features",
        type=feature_kind(),
        help=FEATURES_HELP + "the run's eval.features. Probes, evaluate, embed, "
        "acclimate.load and ONNX use it; the weights are the same whatever it is",
    )
    e.add_argument(
        "--start-blend",
        type=float,
        metavar="KEEP",
        help="export start + KEEP * (adapted - start), WiSE-FT's weight interpolation: less "
        "forgetting of other domains for some of the gain (default: the run's "
        "export.start_blend, 1 = the adapted weights)",
    )
    e.set_defaults(fn=run)


def run(args: argparse.Namespace) -> int:
    from acclimate.api import export_run
    from acclimate.export.meta import read_export_meta

    out = export_run(
        args.run,
        args.out,
        student=args.student,
        features=args.features,
        start_blend=args.start_blend,
    )
    meta = read_export_meta(out)
    kind, keep = meta.get("features", "pooled"), meta.get("start_blend", 1.0)
    blend = f", weights start + {keep:g} x adaptation" if keep != 1.0 else ""
    print(f"exported {meta.get('source') or args.run} to {out} ({kind} features{blend})")
    if args.onnx:
        from acclimate.export.onnx import add_onnx

        try:
            info = add_onnx(out)
        except ImportError as e:
            raise UsageError(str(e)) from None
        diff = info.get("max_abs_diff")
        checked = f"max abs diff to PyTorch {diff:.1e}" if diff is not None else "not checked"
        print(f"ONNX: {out / info['file']} ({checked})")
    return 0
