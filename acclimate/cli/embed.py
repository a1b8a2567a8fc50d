"""``acclimate embed MODEL IMAGES --out FILE [--faiss]`` (features to disk, optionally a FAISS
index) and ``acclimate search INDEX QUERY_IMAGES`` (nearest neighbours in that index)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from acclimate.cli.options import UsageError, add_model_args, feature_kind
from acclimate.fileio import write_json_atomic


def add_parsers(sub: argparse._SubParsersAction) -> None:
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
    add_model_args(em)
    em.set_defaults(fn=run_embed)

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
    se.set_defaults(fn=run_search)


def embed_source(
    r: Any, images: str, kind: str, batch_size: int, desc: str, options: Any = None
) -> tuple[Any, list[str]]:
    """Features of the readable images of a source (progress bar) and their file names, row
    for row; unreadable files are left out (with a warning). ``r``: a ``ResolvedModel``;
    ``options`` (ReadOptions) default to the model's own (``r.options``)."""
    from acclimate.data.datamodule import eval_loader
    from acclimate.data.sources import open_source
    from acclimate.data.transforms import EvalTransform
    from acclimate.eval.features import extract_features_indexed

    options = r.options if options is None else options
    src = open_source(images, None, channels=len(r.mean), options=options)
    loader = eval_loader(src, EvalTransform(r.image_size, r.mean, r.std, r.clip), batch_size)
    feats, _, kept = extract_features_indexed(r.model, loader, kind=kind, progress=True, desc=desc)
    return feats, [src.describe(i) for i in kept.tolist()]


def _absolute(path: str | None) -> str | None:
    """A path that exists, made absolute (an index is queried from anywhere); else as given."""
    return str(Path(path).resolve()) if path and Path(path).exists() else path


def run_embed(args: argparse.Namespace) -> int:
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
    feats, files = embed_source(r, args.images, kind, args.batch_size, "embed")
    out = save_features(args.out, feats, files)
    print(f"{tuple(feats.shape)} {kind} features -> {out} (file list: {files_list_path(out)})")
    if args.faiss:
        info = {
            "model": _absolute(args.model),
            "weights": _absolute(args.weights),
            "image_size": r.image_size,
            "channels": len(r.mean),
            "kind": kind,
            "reader": r.options.to_dict(),
        }
        try:
            index = write_index(out, feats, files, info)
        except ImportError as e:
            raise UsageError(str(e)) from None
        print(f"FAISS index ({len(files)} vectors, cosine) -> {index}")
    return 0


def _neighbours(names: list[str], files: list[str], scores: Any, ids: Any) -> list[dict]:
    """One entry per query: its k neighbours (rank, file, cosine score), best first."""
    return [
        {
            "query": q,
            "neighbours": [
                {"rank": j + 1, "file": files[i], "score": round(float(s), 6)}
                for j, (i, s) in enumerate(zip(row_ids.tolist(), row_s.tolist(), strict=True))
            ],
        }
        for q, row_ids, row_s in zip(names, ids, scores, strict=True)
    ]


def run_search(args: argparse.Namespace) -> int:
    from acclimate.data.readers import ReadOptions
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
    options = ReadOptions.from_dict(meta["reader"]) if "reader" in meta else None
    queries, names = embed_source(
        r, args.queries, meta["kind"], args.batch_size, "queries", options
    )
    scores, ids = search(index, queries, args.k)
    found = _neighbours(names, files, scores, ids)
    result = {
        "index": str(args.index),
        "k": int(ids.shape[1]),
        "metric": "cosine",
        "queries": found,
    }
    write_json_atomic(Path(args.out), result)
    for q in found[: args.print_max]:
        best = ", ".join(f"{Path(n['file']).name} ({n['score']:.3f})" for n in q["neighbours"])
        print(f"{q['query']}: {best}")
    if len(names) > args.print_max:
        print(f"... {len(names) - args.print_max} more queries in {args.out}")
    print(f"{len(names)} queries x {result['k']} neighbours -> {args.out}")
    return 0
