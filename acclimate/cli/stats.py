"""``acclimate stats SRC``: per-channel mean / std / percentiles of a source, for the recipe's
``data.mean`` / ``data.std`` / ``data.stats`` / ``data.clip``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from acclimate.cli.options import UsageError


def add_parser(sub: argparse._SubParsersAction) -> None:
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
    st.set_defaults(fn=run)


def band_list(text: str | None) -> list[int | str] | None:
    """``"3,2,1"`` -> [3, 2, 1]; ``"B04,B03"`` -> ["B04", "B03"]."""
    if not text:
        return None
    return [int(b) if b.strip().lstrip("-").isdigit() else b.strip() for b in text.split(",")]


def _read_options(args: argparse.Namespace, bands: list[int | str] | None) -> Any:
    from acclimate.data.readers import ReadOptions

    window = [float(v) for v in args.window.split(",")] if args.window else None
    if window is not None and len(window) != 2:
        raise UsageError("--window takes CENTRE,WIDTH (e.g. 40,400 for a CT soft-tissue window)")
    names = args.band_names.split(",") if args.band_names else None
    return ReadOptions.from_dict(
        {
            "bands": bands,
            "band_names": None if names is None else [n.strip() for n in names],
            "window": window,
            "slice_axis": args.slice_axis,
            "nodata": args.nodata,
            "max_pixels": args.max_pixels,
        }
    )


def _clip(text: str | None) -> list[float] | None:
    from acclimate.data.stats import check_clip

    if not text:
        return None
    try:
        return list(check_clip([float(v) for v in text.split(",")]))
    except ValueError as e:
        raise UsageError(f"--clip: {e}") from None


def _rounded(values: list[float]) -> list[float]:
    return [round(v, 4) for v in values]


def _print(stats: dict[str, Any], clip: list[float] | None, written: list[Path]) -> None:
    mean, std = stats["mean"], stats["std"]
    if stats["unreadable"] or stats["nodata_values"]:
        print(
            f"left out: {stats['unreadable']} unreadable image(s), {stats['nodata_values']} "
            f"nodata/non-finite value(s) in {stats['nodata_images']} image(s) "
            "(named in the log)"
        )
    print(f"mean: {_rounded(mean)}\nstd:  {_rounded(std)}")
    for p in ("1", "99"):
        if p in stats["percentiles"]:
            print(f"p{p}:  {_rounded(stats['percentiles'][p])}")
    if clip is not None:
        c = stats["clip"]
        print(
            f"clipped to p{clip[0]:g}-p{clip[1]:g}: mean {_rounded(c['mean'])}, "
            f"std {_rounded(c['std'])} (data.clip=[{clip[0]:g},{clip[1]:g}])"
        )
    print(
        f"use in a recipe: data.mean={_rounded(mean)} data.std={_rounded(std)}"
        + (f", or data.stats={written[0]}" if written else "")
    )


def run(args: argparse.Namespace) -> int:
    from acclimate.data.datamodule import resolve_split
    from acclimate.data.sources import open_source
    from acclimate.data.stats import cached_stats_file, save_stats, source_stats

    bands = band_list(args.bands)
    channels = args.channels or (len(bands) if bands else 3)
    options = _read_options(args, bands)
    clip = _clip(args.clip)
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
    _print(stats, clip, written)
    if cache is not None:
        print(f"cached for data.mean: auto on this source and split: {cache}")
    return 0
