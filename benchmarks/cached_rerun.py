"""Time a study's first run on an empty cache and a fully cached rerun of it.

Usage: .venv/bin/python benchmarks/cached_rerun.py [CONFIG.yaml] [--quick]
The cached rerun should do no model work at all; the issue's target is under 5% of the
first run's time. Each run is a fresh `calibtune run` process, so start-up is counted.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("config", nargs="?")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--cache", help="cache folder (default: a new empty one)")
    args = parser.parse_args()
    cache = args.cache or tempfile.mkdtemp(prefix="calibtune-bench-")
    out = tempfile.mkdtemp(prefix="calibtune-bench-run-")
    cmd = [sys.executable, "-m", "calibtune", "run", *([args.config] if args.config else []), "-o", out]
    if args.quick:
        cmd.append("--quick")
    env = {**os.environ, "CALIBTUNE_CACHE": cache}
    times = []
    for label in ("first run", "cached rerun"):
        start = time.perf_counter()
        subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
        print(f"{label:13}: {times[-1]:8.1f} s")
    print(f"rerun / first: {100 * times[1] / times[0]:.1f}%  (cache {cache})")


if __name__ == "__main__":
    main()
