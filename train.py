"""Thin entry point: ``python train.py RECIPE [key=value ...]`` is ``acclimate train``."""

import sys

from acclimate.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
