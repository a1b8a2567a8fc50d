"""``acclimate probe DIR --data SRC``: a linear probe into an export folder
(:func:`acclimate.export.probes.fit_probe`)."""

from __future__ import annotations

import argparse

from acclimate.cli.options import FEATURES_HELP, add_eval_args, feature_kind, protocol_args


def add_parser(sub: argparse._SubParsersAction) -> None:
    pr = sub.add_parser("probe", help="train a linear probe into an export folder")
    pr.add_argument("dir", help="export folder")
    pr.add_argument("--name", help="probe name (default: the data folder's name)")
    pr.add_argument(
        "--features", type=feature_kind(), help=FEATURES_HELP + "the export's own (its features)"
    )
    add_eval_args(pr)
    pr.set_defaults(fn=run)


def run(args: argparse.Namespace) -> int:
    from acclimate.eval.protocol import Protocol
    from acclimate.export.probes import fit_probe

    protocol = Protocol(**protocol_args(args))
    done = fit_probe(args.dir, args.data, protocol, name=args.name, features=args.features)
    m = done.metrics
    print(
        f"probe {done.name} ({done.kind} features): linear top-1 {m['linear_top1']:.4f}, kNN "
        f"top-1 {m['knn_top1']:.4f} on {m['n_test']} test images; saved in {done.folder}"
    )
    return 0
