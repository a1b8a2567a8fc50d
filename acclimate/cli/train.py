"""``acclimate train RECIPE [key=value ...]`` (same as ``python train.py``) and ``--resume``."""

from __future__ import annotations

import argparse
import os

from acclimate.cli.options import UsageError


def add_parser(sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser("train", help="continue pretraining from a recipe (same as train.py)")
    t.add_argument("recipe", nargs="?", help="recipe YAML, e.g. recipes/demo.yaml")
    t.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. method.lr=1e-4")
    t.add_argument("--run-dir", help="run folder (default: runs/NAME-TIMESTAMP)")
    t.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue a run from its last checkpoint (overrides may follow)",
    )
    t.set_defaults(fn=run)


def run(args: argparse.Namespace) -> int:
    from acclimate.config import load_recipe
    from acclimate.evidence import summarize
    from acclimate.training import check_resumable, resume_recipe, train

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
