"""The ``acclimate`` command: train | export | probe | evaluate | embed | search | stats.

Each command is a module with ``add_parser(subparsers)`` (its options) and ``run(args)`` (a
thin layer over library functions); this module builds the parser and turns user-facing errors
into one line and an exit status.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
import warnings
from collections.abc import Sequence

from acclimate.cli import embed, evaluate, export, probe, stats, train
from acclimate.cli.options import UsageError
from acclimate.errors import AcclimateError, TrainingFailed
from acclimate.malloc import reuse_freed_memory

EPILOG = "Run `acclimate COMMAND --help` for a command's options."

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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="acclimate",
        description="Continue self-supervised pretraining of a pretrained backbone on your domain, "
        "export the adapted extractor and measure it against its starting point.",
        epilog=EPILOG,
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in (train, export, probe, evaluate):
        command.add_parser(sub)
    embed.add_parsers(sub)  # embed and search
    stats.add_parser(sub)
    return p


def _quiet_libraries() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for name in ("lightning.pytorch", "lightning.fabric"):  # they print through their own handler
        logging.getLogger(name).propagate = False
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*LeafSpec.*")
    warnings.filterwarnings("ignore", ".*Checkpoint directory .* exists and is not empty.*")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _quiet_libraries()
    try:
        reuse_freed_memory()  # feature extraction and training reuse freed tensors' memory
        return args.fn(args)
    except (AcclimateError, OSError) as e:
        if os.environ.get("ACCLIMATE_DEBUG"):
            raise
        line = str(e) if isinstance(e, AcclimateError) else os_error_line(e)
        line = " ".join(line.split())  # one line, whatever the message held
        print(f"acclimate {args.command}: error: {line}", file=sys.stderr)
        return FAILED_EXIT if isinstance(e, TrainingFailed) else ERROR_EXIT


__all__ = ["ERROR_EXIT", "FAILED_EXIT", "UsageError", "build_parser", "main", "os_error_line"]
