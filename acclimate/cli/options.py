"""Options shared by several commands: feature kinds, the evaluation data and protocol, and how
a MODEL given as a timm name is built."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from acclimate.errors import AcclimateError


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


def add_eval_args(q: argparse.ArgumentParser) -> None:
    """The labelled data and the protocol's splits, image cap and probe tie-break."""
    q.add_argument("--data", required=True, help="labelled source (class folders, CSV, .npz)")
    q.add_argument("--train-split", default="train", help="split the probe is fitted on")
    q.add_argument("--test-split", default="auto", help="held-out split (auto: test, else val)")
    q.add_argument(
        "--max-images",
        type=int,
        help="cap per split (random subset); default: training's own protocol, at most 10,000 "
        "train and 5,000 test images",
    )
    q.add_argument("--weight-decay", type=float, default=1e-3, help="linear-probe L2 penalty")


def add_model_args(q: argparse.ArgumentParser) -> None:
    """How a MODEL given as a timm name is built."""
    q.add_argument("--weights", help="for a timm name: hub, package:efficientnet_lite0 or a file")
    q.add_argument("--image-size", type=int, help="input side (default: the model's own)")
    q.add_argument("--channels", type=int, default=3, help="for a timm name: input channels")


def protocol_args(args: argparse.Namespace) -> dict[str, object]:
    """The protocol's fields that :func:`add_eval_args` sets (``Protocol(**...)``)."""
    return {
        "train_split": args.train_split,
        "test_split": args.test_split,
        **(
            {}  # the Protocol's defaults: what training's before/after uses
            if args.max_images is None
            else {"max_train_images": args.max_images, "max_test_images": args.max_images}
        ),
        "probe_weight_decay": args.weight_decay,
    }


class UsageError(AcclimateError):
    """A command-line mistake, reported in one line."""
