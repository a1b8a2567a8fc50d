"""The ``acclimate`` command: train | export | probe | evaluate | embed | search | stats."""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from acclimate.errors import AcclimateError, TrainingFailed
from acclimate.fileio import write_json_atomic

log = logging.getLogger("acclimate")

EPILOG = "Run `acclimate COMMAND --help` for a command's options."


_save_json = write_json_atomic


def cmd_train(args: argparse.Namespace) -> int:
    from acclimate.config import load_recipe
    from acclimate.training import check_resumable, resume_recipe, summarize, train

    if args.resume:
        overrides = ([args.recipe] if args.recipe else []) + args.overrides
        check_resumable(args.resume)  # before anything of the run is read or rewritten
        recipe = resume_recipe(args.resume, overrides)
        run_dir, metrics = train(recipe, args.resume, resume=True)
    else:
        if not args.recipe:
            raise UsageError("give a RECIPE (e.g. recipes/demo.yaml) or --resume RUN_DIR")
        recipe = load_recipe(args.recipe, args.overrides)
        run_dir, metrics = train(recipe, args.run_dir)
    if int(os.environ.get("LOCAL_RANK", "0")) == 0 and int(os.environ.get("NODE_RANK", "0")) == 0:
        print(f"run folder: {run_dir}")
        print(f"before -> after: {summarize(metrics)}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from acclimate.api import export_run
    from acclimate.export.artifact import read_export_meta

    out = export_run(args.run, args.out, student=args.student, features=args.features)
    kind = read_export_meta(out).get("features", "pooled")
    who = "student" if args.student else "teacher"
    print(f"exported {args.run} ({who}, {kind} features) to {out}")
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


def cmd_probe(args: argparse.Namespace) -> int:
    from acclimate.data.datamodule import eval_loader
    from acclimate.eval.evaluate import EvalSettings, labelled_splits, score_features
    from acclimate.eval.features import extract_features
    from acclimate.export import load, write_model_card
    from acclimate.export.artifact import read_json
    from acclimate.preflight import check_writable_dir

    ex = load(args.dir)
    kind = args.features or ex.feature_kind
    check_writable_dir(Path(args.dir) / "probes", "export folder's probes folder", "fix it")
    settings = EvalSettings(
        train_split=args.train_split,
        test_split=args.test_split,
        probe_weight_decay=args.weight_decay,
        max_train_images=args.max_images,
        max_test_images=args.max_images,
    )
    train_src, test_src = labelled_splits(args.data, ex.channels, settings, ex.options)
    feats = [
        extract_features(
            ex.model,
            eval_loader(s, ex.transform, settings.batch_size, settings.num_workers),
            kind,
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
        "feature": kind,
        "classes": train_src.classes,
        "data": str(args.data),
        "metrics": metrics,
        "weight_decay": args.weight_decay,
    }
    _save_json(probes / f"{name}.json", info)
    all_metrics_file = Path(args.dir) / "metrics.json"
    all_metrics = read_json(all_metrics_file) if all_metrics_file.is_file() else {}
    all_metrics.setdefault("probes", {})[name] = metrics
    _save_json(all_metrics_file, all_metrics)
    write_model_card(args.dir)
    print(
        f"probe {name} ({kind} features): linear top-1 {metrics['linear_top1']:.4f}, kNN top-1 "
        f"{metrics['knn_top1']:.4f} on {metrics['n_test']} test images; saved in {probes}"
    )
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from acclimate.data.transforms import EvalTransform
    from acclimate.eval.evaluate import EvalSettings, labelled_splits
    from acclimate.eval.report import ReportSettings, measure_features, split_features, write_report
    from acclimate.export.load import resolve_model
    from acclimate.preflight import check_writable_dir

    check_writable_dir(args.out, "report folder", "choose another --out")
    settings = EvalSettings(
        train_split=args.train_split,
        test_split=args.test_split,
        max_train_images=args.max_images,
        max_test_images=args.max_images,
        probe_weight_decay=args.weight_decay,
    )
    try:
        rs = ReportSettings(
            weight_decays=tuple(args.weight_decays),
            prefer_weight_decay=args.weight_decay,
            shots=tuple(args.shots),
            seeds=tuple(range(args.seeds)),
        )
    except ValueError as e:
        raise UsageError(f"{e} (--weight-decays, --shots, --seeds)") from None
    kind = _evaluation_kind(args.models, args.features)
    results: dict[str, Any] = {
        "data": str(args.data),
        "features": kind,
        "forgetting_data": args.forgetting_data,
        "settings": rs.to_dict(),
        "models": {},
    }
    embeddings = {}
    for spec in args.models:
        r = resolve_model(
            spec, weights=args.weights, image_size=args.image_size, in_chans=args.channels
        )
        tf = EvalTransform(r.image_size, r.mean, r.std, r.clip)
        sources = labelled_splits(args.data, len(r.mean), settings, r.options)
        train, test = split_features(
            r.model, sources, tf, settings.batch_size, settings.num_workers, kind=kind
        )
        metrics = measure_features(train, test, rs, sources[0].classes)
        if args.forgetting_data:
            src = labelled_splits(args.forgetting_data, len(r.mean), settings)
            feats = split_features(
                r.model, src, tf, settings.batch_size, settings.num_workers, kind=kind
            )
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


def _evaluation_kind(models: Sequence[str], given: str | None) -> str:
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


def _record_evaluation(results: dict[str, Any], report: Path) -> None:
    """Put the headline numbers of every evaluated model into each evaluated export folder's
    acclimate.json and re-render its model card."""
    from acclimate.eval.report import headline
    from acclimate.export.artifact import META_FILE, read_export_meta
    from acclimate.export.card import write_model_card

    summary = {
        "data": results["data"],
        "features": results["features"],
        "forgetting_data": results.get("forgetting_data"),
        "report": str(report.resolve()),
        "models": {s: headline(m) for s, m in results["models"].items()},
    }
    for spec in results["models"]:
        meta_file = Path(spec) / META_FILE
        if meta_file.is_file():
            meta = read_export_meta(spec)
            meta["evaluation"] = {**summary, "this": spec}
            _save_json(meta_file, meta)
            write_model_card(spec)


def _embed_source(
    r: Any, images: str, kind: str, batch_size: int, desc: str, options: Any = None
) -> tuple[Any, list[str]]:
    """Features of the readable images of a source (progress bar) and their file names, row
    for row; unreadable files are left out (with a warning). ``options`` (ReadOptions) default
    to the model's own (``r.options``)."""
    from acclimate.data.datamodule import eval_loader
    from acclimate.data.sources import open_source
    from acclimate.data.transforms import EvalTransform
    from acclimate.eval.features import extract_features_indexed

    options = r.options if options is None else options
    src = open_source(images, None, channels=len(r.mean), options=options)
    loader = eval_loader(src, EvalTransform(r.image_size, r.mean, r.std, r.clip), batch_size)
    feats, _, kept = extract_features_indexed(r.model, loader, kind=kind, progress=True, desc=desc)
    return feats, [src.describe(i) for i in kept.tolist()]


def cmd_embed(args: argparse.Namespace) -> int:
    from acclimate.eval.embed import files_list_path, save_features, write_index
    from acclimate.export.load import resolve_model
    from acclimate.preflight import check_writable_dir

    if args.faiss and args.kind == "patch":
        raise UsageError(
            "--faiss indexes one vector per image: use --kind pooled or cls (or last{k})"
        )
    check_writable_dir(Path(args.out).parent, "folder of --out", "choose another --out")
    r = resolve_model(
        args.model, weights=args.weights, image_size=args.image_size, in_chans=args.channels
    )
    kind = args.kind or r.features or "pooled"
    feats, files = _embed_source(r, args.images, kind, args.batch_size, "embed")
    out = save_features(args.out, feats, files)
    print(f"{tuple(feats.shape)} {kind} features -> {out} (file list: {files_list_path(out)})")
    if args.faiss:
        try:
            model = str(Path(args.model).resolve()) if Path(args.model).exists() else args.model
            weights = args.weights
            if weights and Path(weights).exists():
                weights = str(Path(weights).resolve())
            info = {
                "model": model,
                "weights": weights,
                "image_size": r.image_size,
                "channels": len(r.mean),
                "kind": kind,
                "reader": r.options.to_dict(),
            }
            index = write_index(out, feats, files, info)
        except ImportError as e:
            raise UsageError(str(e)) from None
        print(f"FAISS index ({len(files)} vectors, cosine) -> {index}")
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from acclimate.eval.embed import load_index, search
    from acclimate.export.load import resolve_model

    try:
        index, files, meta = load_index(args.index)
    except ImportError as e:
        raise UsageError(str(e)) from None
    r = resolve_model(
        args.model or meta["model"],
        weights=args.weights or meta.get("weights"),
        image_size=meta["image_size"],
        in_chans=meta["channels"],
    )
    from acclimate.data.readers import ReadOptions

    options = ReadOptions.from_dict(meta["reader"]) if "reader" in meta else None
    queries, names = _embed_source(
        r, args.queries, meta["kind"], args.batch_size, "queries", options
    )
    scores, ids = search(index, queries, args.k)
    result = {
        "index": str(args.index),
        "k": int(ids.shape[1]),
        "metric": "cosine",
        "queries": [
            {
                "query": q,
                "neighbours": [
                    {"rank": j + 1, "file": files[i], "score": round(float(s), 6)}
                    for j, (i, s) in enumerate(zip(row_ids.tolist(), row_s.tolist(), strict=True))
                ],
            }
            for q, row_ids, row_s in zip(names, ids, scores, strict=True)
        ],
    }
    _save_json(Path(args.out), result)
    for q in result["queries"][: args.print_max]:
        best = ", ".join(f"{Path(n['file']).name} ({n['score']:.3f})" for n in q["neighbours"])
        print(f"{q['query']}: {best}")
    if len(names) > args.print_max:
        print(f"... {len(names) - args.print_max} more queries in {args.out}")
    print(f"{len(names)} queries x {result['k']} neighbours -> {args.out}")
    return 0


def _band_list(text: str | None) -> list[int | str] | None:
    """``"3,2,1"`` -> [3, 2, 1]; ``"B04,B03"`` -> ["B04", "B03"]."""
    if not text:
        return None
    return [int(b) if b.strip().lstrip("-").isdigit() else b.strip() for b in text.split(",")]


def cmd_stats(args: argparse.Namespace) -> int:
    from acclimate.data.datamodule import resolve_split
    from acclimate.data.readers import ReadOptions
    from acclimate.data.sources import open_source
    from acclimate.data.stats import cached_stats_file, check_clip, save_stats, source_stats

    bands = _band_list(args.bands)
    channels = args.channels or (len(bands) if bands else 3)
    window = [float(v) for v in args.window.split(",")] if args.window else None
    if window is not None and len(window) != 2:
        raise UsageError("--window takes CENTRE,WIDTH (e.g. 40,400 for a CT soft-tissue window)")
    names = args.band_names.split(",") if args.band_names else None
    options = ReadOptions.from_dict(
        {
            "bands": bands,
            "band_names": None if names is None else [n.strip() for n in names],
            "window": window,
            "slice_axis": args.slice_axis,
            "nodata": args.nodata,
            "max_pixels": args.max_pixels,
        }
    )
    clip = None
    if args.clip:
        try:
            clip = list(check_clip([float(v) for v in args.clip.split(",")]))
        except ValueError as e:
            raise UsageError(f"--clip: {e}") from None
    split = None if args.split == "all" else resolve_split(args.source, args.split)
    src = open_source(args.source, split, channels=channels, options=options)
    stats = source_stats(src, max_images=args.max_images, clip=clip)
    result = {"source": str(args.source), "split": split, "options": options.to_dict(), **stats}
    written = [Path(args.out)] if args.out else []
    cache = cached_stats_file(args.source, split, channels, options)
    if cache is not None:
        written.append(cache)
    for path in written:
        save_stats(path, result)
    mean, std = stats["mean"], stats["std"]
    if stats["unreadable"] or stats["nodata_values"]:
        print(
            f"left out: {stats['unreadable']} unreadable image(s), {stats['nodata_values']} "
            f"nodata/non-finite value(s) in {stats['nodata_images']} image(s) "
            "(named in the log)"
        )
    print(f"mean: {[round(m, 4) for m in mean]}\nstd:  {[round(s, 4) for s in std]}")
    for p in ("1", "99"):
        if p in stats["percentiles"]:
            print(f"p{p}:  {[round(v, 4) for v in stats['percentiles'][p]]}")
    if clip is not None:
        c = stats["clip"]
        print(
            f"clipped to p{clip[0]:g}-p{clip[1]:g}: mean {[round(m, 4) for m in c['mean']]}, "
            f"std {[round(s, 4) for s in c['std']]} (data.clip=[{clip[0]:g},{clip[1]:g}])"
        )
    print(
        f"use in a recipe: data.mean={[round(m, 4) for m in mean]} "
        f"data.std={[round(s, 4) for s in std]}"
        + (f", or data.stats={written[0]}" if written else "")
    )
    if cache is not None:
        print(f"cached for data.mean: auto on this source and split: {cache}")
    return 0


def feature_kind(vector: bool = True) -> Callable[[str], str]:
    """An argparse ``type`` for a feature kind: pooled, cls, last{k} (and patch unless
    ``vector``); a bad name is a usage error naming the allowed ones."""

    def parse(text: str) -> str:
        from acclimate.eval.features import kind_problem

        problem = kind_problem(text, vector)
        if problem:
            raise argparse.ArgumentTypeError(problem)
        return text

    return parse


FEATURES_HELP = (
    "frozen features: pooled (the model's own pooling), cls (ViT CLS token) or last{k}, the "
    "last k blocks or stages concatenated (last4: DINOv2's linear evaluation); default: "
)


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
    pr.add_argument(
        "--features", type=feature_kind(), help=FEATURES_HELP + "the export's own (its features)"
    )
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
    ev.set_defaults(fn=cmd_evaluate)

    em = sub.add_parser(
        "embed", help="extract features of images to .npy/.safetensors (+ a FAISS index)"
    )
    em.add_argument("model", metavar="MODEL", help="export folder, run folder, .ckpt or timm name")
    em.add_argument("images", help="image source (folder, CSV, .npz)")
    em.add_argument(
        "--out",
        required=True,
        help="features file: FILE.npy or FILE.safetensors (key 'features'); the file list goes "
        "to FILE.files.txt",
    )
    em.add_argument(
        "--kind",
        "--features",
        type=feature_kind(vector=False),
        help="pooled (the model's own pooling, (N, D)), cls (ViT CLS token, (N, D)), last{k} "
        "(the last k blocks or stages concatenated, (N, D')) or patch tokens ((N, T, D), for "
        "dense tasks); default: the kind an export or run records, else pooled",
    )
    em.add_argument("--batch-size", type=int, default=64)
    em.add_argument(
        "--faiss",
        action="store_true",
        help="also build an exact cosine FAISS index FILE.faiss (+ FILE.index.json) for "
        "`acclimate search`; needs acclimate[faiss]",
    )
    model_args(em)
    em.set_defaults(fn=cmd_embed)

    se = sub.add_parser("search", help="nearest neighbours of query images in a FAISS index")
    se.add_argument(
        "index", metavar="INDEX", help="FILE.faiss written by `acclimate embed --faiss`"
    )
    se.add_argument("queries", metavar="QUERY_IMAGES", help="image source (folder, CSV, .npz)")
    se.add_argument("-k", type=int, default=10, help="neighbours per query")
    se.add_argument("--out", default="neighbours.json", help="JSON file of the results")
    se.add_argument(
        "--model",
        help="embed queries with this MODEL instead of the one recorded in the index (it must "
        "give the same features)",
    )
    se.add_argument("--weights", help="weights for --model (a timm name)")
    se.add_argument("--batch-size", type=int, default=64)
    se.add_argument("--print-max", type=int, default=20, help="queries printed to the terminal")
    se.set_defaults(fn=cmd_search)

    st = sub.add_parser(
        "stats", help="per-channel mean/std/percentiles of a source, for data.mean/std/stats"
    )
    st.add_argument("source", help="image source (folder, CSV, .npz)")
    st.add_argument(
        "--split",
        default="auto",
        help="one split; auto (default): train when the source has splits, as training does; "
        "all: every split",
    )
    st.add_argument(
        "--channels", type=int, help="bands per image (default: the --bands count, else 3)"
    )
    st.add_argument("--bands", help="bands to keep: 0-based indices or names, e.g. 3,2,1")
    st.add_argument("--band-names", help="names of the file's bands, e.g. B01,B02,...,B12")
    st.add_argument("--window", help="CENTRE,WIDTH window in raw/physical units (DICOM, NIfTI)")
    st.add_argument("--slice-axis", type=int, default=2, help="NIfTI slicing axis")
    st.add_argument(
        "--nodata",
        type=float,
        help="a stored value meaning no data (data.nodata), besides NaN, inf, |v| >= 3.4e38 "
        "and the files' GDAL nodata tag",
    )
    st.add_argument(
        "--max-pixels",
        type=int,
        help="skip images declaring more pixels (data.max_pixels; default 8192 x 8192)",
    )
    st.add_argument(
        "--max-images", type=int, default=10000, help="random sample size (one streaming pass)"
    )
    st.add_argument(
        "--clip",
        help="LOW,HIGH percentiles (e.g. 1,99): also the bounds and the clipped values' mean/std "
        "for data.clip (a second pass over the sample)",
    )
    st.add_argument("--out", help="also write the statistics to this JSON file (data.stats)")
    st.set_defaults(fn=cmd_stats)
    return p


class UsageError(AcclimateError):
    """A command-line mistake, reported in one line."""


# The exit status of a command stopped by a user-facing error (as argparse's own usage errors).
ERROR_EXIT = 2
# The exit status of a run that stopped itself (diverged, collapsed, a rank died).
FAILED_EXIT = 1

_OS_FIXES = {
    errno.ENOSPC: "free some disk space or write to another disk",
    errno.EDQUOT: "free some space (disk quota) or write elsewhere",
    errno.EACCES: "fix its permissions or choose another location",
    errno.EPERM: "fix its permissions or choose another location",
    errno.EROFS: "it is on a read-only file system: choose another location",
}


def os_error_line(e: OSError) -> str:
    """One line for an OSError met while reading or writing a user's path: the path, the
    system's reason and, for full disks and permissions, the fix."""
    if e.filename is None or e.strerror is None:
        return str(e) or type(e).__name__  # raised with a message of its own
    fix = _OS_FIXES.get(e.errno)
    return f"{e.filename}: {e.strerror}" + (f"; {fix}" if fix else "")


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
    except (AcclimateError, OSError) as e:
        if os.environ.get("ACCLIMATE_DEBUG"):
            raise
        line = str(e) if isinstance(e, AcclimateError) else os_error_line(e)
        line = " ".join(line.split())  # one line, whatever the message held
        print(f"acclimate {args.command}: error: {line}", file=sys.stderr)
        return FAILED_EXIT if isinstance(e, TrainingFailed) else ERROR_EXIT


if __name__ == "__main__":
    sys.exit(main())
