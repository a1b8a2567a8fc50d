"""The ``acclimate`` command: train | export | probe | evaluate | embed | stats."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger("acclimate")

EPILOG = "Run `acclimate COMMAND --help` for a command's options."


def _save_json(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    tmp.replace(path)


def cmd_train(args: argparse.Namespace) -> int:
    from acclimate.config import load_recipe
    from acclimate.training import resume_recipe, summarize, train

    if args.resume:
        overrides = ([args.recipe] if args.recipe else []) + args.overrides
        recipe = resume_recipe(args.resume, overrides)
        run_dir, metrics = train(recipe, args.resume, resume=True)
    else:
        if not args.recipe:
            raise UsageError("give a RECIPE (e.g. recipes/demo.yaml) or --resume RUN_DIR")
        recipe = load_recipe(args.recipe, args.overrides)
        run_dir, metrics = train(recipe, args.run_dir)
    print(f"run folder: {run_dir}")
    print(f"before -> after: {summarize(metrics)}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from acclimate.export.artifact import export_backbone
    from acclimate.export.load import resolve_model

    resolved = resolve_model(args.run, which="student" if args.student else "teacher")
    meta = resolved.metadata
    run = Path(args.run)
    run_dir = run if run.is_dir() else run.parent.parent
    metrics_file = run_dir / "metrics.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.exists() else {}
    out = export_backbone(
        resolved.model,
        args.out,
        mean=resolved.mean,
        std=resolved.std,
        image_size=resolved.image_size,
        recipe=meta.get("recipe"),
        metrics=metrics,
        source=resolved.description,
    )
    print(f"exported {resolved.description} to {out}")
    return 0


def cmd_probe(args: argparse.Namespace) -> int:
    from acclimate.data.datamodule import eval_loader
    from acclimate.eval.evaluate import EvalSettings, labelled_splits, score_features
    from acclimate.eval.features import extract_features
    from acclimate.export import load, write_model_card

    ex = load(args.dir)
    settings = EvalSettings(
        train_split=args.train_split,
        test_split=args.test_split,
        probe_weight_decay=args.weight_decay,
        max_train_images=args.max_images,
        max_test_images=args.max_images,
    )
    train_src, test_src = labelled_splits(args.data, ex.channels, settings)
    feats = [
        extract_features(
            ex.model,
            eval_loader(s, ex.transform, settings.batch_size, settings.num_workers),
            progress=True,
        )
        for s in (train_src, test_src)
    ]
    metrics, probe = score_features(feats[0], feats[1], settings, classes=train_src.classes)
    name = args.name or Path(args.data.rstrip("/")).stem
    probes = Path(args.dir) / "probes"
    probes.mkdir(exist_ok=True)
    probe.save(probes / f"{name}.safetensors")
    info = {
        "feature": "pooled",
        "classes": train_src.classes,
        "data": str(args.data),
        "metrics": metrics,
        "weight_decay": args.weight_decay,
    }
    _save_json(probes / f"{name}.json", info)
    all_metrics_file = Path(args.dir) / "metrics.json"
    all_metrics = json.loads(all_metrics_file.read_text()) if all_metrics_file.exists() else {}
    all_metrics.setdefault("probes", {})[name] = metrics
    _save_json(all_metrics_file, all_metrics)
    write_model_card(args.dir)
    print(
        f"probe {name}: linear top-1 {metrics['linear_top1']:.4f}, kNN top-1 "
        f"{metrics['knn_top1']:.4f} on {metrics['n_test']} test images; saved in {probes}"
    )
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from acclimate.data.transforms import EvalTransform
    from acclimate.eval.evaluate import EvalSettings, labelled_splits
    from acclimate.eval.report import ReportSettings, measure_features, split_features, write_report
    from acclimate.export.load import resolve_model

    settings = EvalSettings(
        train_split=args.train_split,
        test_split=args.test_split,
        max_train_images=args.max_images,
        max_test_images=args.max_images,
        probe_weight_decay=args.weight_decay,
    )
    rs = ReportSettings(
        weight_decays=tuple(args.weight_decays),
        prefer_weight_decay=args.weight_decay,
        shots=tuple(args.shots),
        seeds=tuple(range(args.seeds)),
    )
    results: dict[str, Any] = {
        "data": str(args.data),
        "forgetting_data": args.forgetting_data,
        "settings": rs.to_dict(),
        "models": {},
    }
    embeddings = {}
    for spec in args.models:
        r = resolve_model(
            spec, weights=args.weights, image_size=args.image_size, in_chans=args.channels
        )
        tf = EvalTransform(r.image_size, r.mean, r.std)
        sources = labelled_splits(args.data, len(r.mean), settings)
        train, test = split_features(r.model, sources, tf, settings.batch_size, settings.num_workers)
        metrics = measure_features(train, test, rs, sources[0].classes)
        if args.forgetting_data:
            src = labelled_splits(args.forgetting_data, len(r.mean), settings)
            feats = split_features(r.model, src, tf, settings.batch_size, settings.num_workers)
            metrics["forgetting"] = measure_features(
                *feats, rs, src[0].classes, fewshot=False, retrieval=False
            )
        results["models"][spec] = {"description": r.description, **metrics}
        embeddings[spec] = test
        print(
            f"{spec}: linear top-1 {metrics['linear_top1']:.4f}, kNN top-1 "
            f"{metrics['knn_top1']:.4f}, macro-F1 {metrics['macro_f1']:.4f} "
            f"({metrics['n_train']} train / {metrics['n_test']} test)"
        )
    paths = write_report(results, args.out, embeddings, rs, plots=not args.no_plots)
    _record_evaluation(results, paths["markdown"])
    print(f"report: {paths['markdown']} and {paths['html']}; metrics: {paths['metrics']}")
    return 0


def _record_evaluation(results: dict[str, Any], report: Path) -> None:
    """Put the headline numbers of every evaluated model into each evaluated export folder's
    acclimate.json and re-render its model card."""
    from acclimate.eval.report import headline
    from acclimate.export.artifact import META_FILE, write_model_card

    summary = {
        "data": results["data"],
        "forgetting_data": results.get("forgetting_data"),
        "report": str(report.resolve()),
        "models": {s: headline(m) for s, m in results["models"].items()},
    }
    for spec in results["models"]:
        meta_file = Path(spec) / META_FILE
        if meta_file.is_file():
            meta = json.loads(meta_file.read_text())
            meta["evaluation"] = {**summary, "this": spec}
            _save_json(meta_file, meta)
            write_model_card(spec)


def cmd_embed(args: argparse.Namespace) -> int:
    import numpy as np

    from acclimate.data.datamodule import eval_loader
    from acclimate.data.sources import open_source
    from acclimate.data.transforms import EvalTransform
    from acclimate.eval.features import extract_features
    from acclimate.export.load import resolve_model

    r = resolve_model(
        args.model, weights=args.weights, image_size=args.image_size, in_chans=args.channels
    )
    src = open_source(args.images, None, channels=len(r.mean))
    loader = eval_loader(src, EvalTransform(r.image_size, r.mean, r.std), args.batch_size)
    feats, _ = extract_features(r.model, loader, kind=args.kind, progress=True, desc="embed")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.save(out, feats.numpy())
    files = out.with_suffix(".files.txt")
    files.write_text("\n".join(src.describe(i) for i in range(len(src))) + "\n")
    print(f"{tuple(feats.shape)} {args.kind} features -> {out} (file list: {files})")
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    from acclimate.data.sources import open_source
    from acclimate.data.stats import channel_stats

    src = open_source(args.source, args.split, channels=args.channels)
    mean, std = channel_stats(src, max_images=args.max_images)
    result = {
        "source": str(args.source),
        "split": args.split,
        "channels": args.channels,
        "n_images": len(src),
        "sampled": min(len(src), args.max_images),
        "mean": mean,
        "std": std,
    }
    if args.out:
        _save_json(Path(args.out), result)
    print(f"mean: {[round(m, 4) for m in mean]}\nstd:  {[round(s, 4) for s in std]}")
    print(
        f"use in a recipe: data.mean={[round(m, 4) for m in mean]} "
        f"data.std={[round(s, 4) for s in std]}"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="acclimate",
        description="Continue self-supervised pretraining of a pretrained backbone on your domain, "
        "export the adapted extractor and measure it against its starting point.",
        epilog=EPILOG,
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    t = sub.add_parser("train", help="continue pretraining from a recipe (same as train.py)")
    t.add_argument("recipe", nargs="?", help="recipe YAML, e.g. recipes/demo.yaml")
    t.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. method.lr=1e-4")
    t.add_argument("--run-dir", help="run folder (default: runs/NAME-TIMESTAMP)")
    t.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue a run from its last checkpoint (overrides may follow)",
    )
    t.set_defaults(fn=cmd_train)

    e = sub.add_parser("export", help="write a timm-loadable export folder from a run")
    e.add_argument("run", help="run folder or .ckpt checkpoint")
    e.add_argument("--out", required=True, help="export folder to write")
    e.add_argument(
        "--student", action="store_true", help="export the student instead of the EMA teacher"
    )
    e.set_defaults(fn=cmd_export)

    def eval_args(q: argparse.ArgumentParser) -> None:
        q.add_argument("--data", required=True, help="labelled source (class folders, CSV, .npz)")
        q.add_argument("--train-split", default="train", help="split the probe is fitted on")
        q.add_argument("--test-split", default="auto", help="held-out split (auto: test, else val)")
        q.add_argument(
            "--max-images", type=int, default=10000, help="cap per split (random subset)"
        )
        q.add_argument("--weight-decay", type=float, default=1e-3, help="linear-probe L2 penalty")

    pr = sub.add_parser("probe", help="train a linear probe into an export folder")
    pr.add_argument("dir", help="export folder")
    pr.add_argument("--name", help="probe name (default: the data folder's name)")
    eval_args(pr)
    pr.set_defaults(fn=cmd_probe)

    def model_args(q: argparse.ArgumentParser) -> None:
        q.add_argument(
            "--weights", help="for a timm name: hub, package:efficientnet_lite0 or a file"
        )
        q.add_argument("--image-size", type=int, help="input side (default: the model's own)")
        q.add_argument("--channels", type=int, default=3, help="for a timm name: input channels")

    ev = sub.add_parser("evaluate", help="frozen-feature kNN + linear probe of one or more models")
    ev.add_argument(
        "models",
        nargs="+",
        metavar="MODEL",
        help="export folder, run folder, .ckpt, or timm name (with --weights)",
    )
    eval_args(ev)
    model_args(ev)
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
        "--seeds", type=int, default=3, help="random draws per few-shot setting (raise for "
        "tighter error bars)"
    )
    ev.add_argument("--no-plots", action="store_true", help="skip the PNG figures")
    ev.set_defaults(fn=cmd_evaluate)

    em = sub.add_parser("embed", help="extract features of a folder of images to .npy")
    em.add_argument("model", metavar="MODEL", help="export folder, run folder, .ckpt or timm name")
    em.add_argument("images", help="image source (folder, CSV, .npz)")
    em.add_argument("--out", required=True, help="output .npy file")
    em.add_argument("--kind", choices=["pooled", "cls", "patch"], default="pooled")
    em.add_argument("--batch-size", type=int, default=64)
    model_args(em)
    em.set_defaults(fn=cmd_embed)

    st = sub.add_parser("stats", help="per-channel mean/std of a source, for data.mean/std")
    st.add_argument("source", help="image source (folder, CSV, .npz)")
    st.add_argument("--split", help="one split only (default: all)")
    st.add_argument("--channels", type=int, default=3)
    st.add_argument("--max-images", type=int, default=10000)
    st.add_argument("--out", help="also write the statistics to this JSON file")
    st.set_defaults(fn=cmd_stats)
    return p


USER_ERRORS = ("ConfigError", "DataError", "BackboneError", "UsageError")


class UsageError(ValueError):
    """A command-line mistake, reported in one line."""


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for name in ("lightning.pytorch", "lightning.fabric"):  # they print through their own handler
        logging.getLogger(name).propagate = False
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*LeafSpec.*")
    warnings.filterwarnings("ignore", ".*Checkpoint directory .* exists and is not empty.*")
    try:
        return args.fn(args)
    except (ValueError, FileNotFoundError) as e:
        user_error = type(e).__name__ in USER_ERRORS or isinstance(e, FileNotFoundError)
        if os.environ.get("ACCLIMATE_DEBUG") or not user_error:
            raise
        print(f"acclimate {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
