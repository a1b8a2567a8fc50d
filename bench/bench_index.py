"""Index a source of N image paths (default 1,000,000 empty files in class folders): time and peak
memory of the first listing and of the cached one.

    python bench/bench_index.py [--n 1000000] [--classes 100] [--root DIR] [--keep]

Empty files are enough: indexing never opens them. Peak memory is the process's maximum resident
set size (``ru_maxrss``), measured in a fresh subprocess for each run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = """
import json, os, resource, sys, time
os.environ["ACCLIMATE_CACHE_DIR"] = sys.argv[2]
from acclimate.data import open_source
t = time.perf_counter()
src = open_source(sys.argv[1])
s = time.perf_counter() - t
print(json.dumps({"n": len(src), "seconds": s, "classes": len(src.classes),
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def make_files(root: Path, n: int, classes: int) -> None:
    per = -(-n // classes)
    made = 0
    for c in range(classes):
        d = root / f"class_{c:03d}"
        d.mkdir(parents=True, exist_ok=True)
        for j in range(min(per, n - made)):
            with open(d / f"img_{j:07d}.jpg", "wb"):
                pass
        made += min(per, n - made)


def run(root: Path, cache: Path) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(root), str(cache)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--classes", type=int, default=100)
    p.add_argument("--root", help="folder to create the files in (default: a temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the generated files")
    args = p.parse_args()
    base = Path(args.root or tempfile.mkdtemp(prefix="acclimate-bench-index-"))
    root, cache = base / "images", base / "cache"
    t = time.perf_counter()
    make_files(root, args.n, args.classes)
    print(f"created {args.n} empty files in {time.perf_counter() - t:.1f} s under {root}")
    try:
        first = run(root, cache)
        print(f"first index:  {first['n']} paths, {first['seconds']:.1f} s, "
              f"peak {first['peak_mb']:.0f} MB")  # fmt: skip
        second = run(root, cache)
        print(f"cached index: {second['n']} paths, {second['seconds']:.1f} s, "
              f"peak {second['peak_mb']:.0f} MB")  # fmt: skip
        cache_mb = sum(f.stat().st_size for f in cache.rglob("*") if f.is_file()) / 2**20
        print(f"cache file: {cache_mb:.0f} MB; machine: {os.cpu_count()} CPUs")
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
