"""Run every benchmark, each in a fresh process, then regenerate the results table (``make bench``).

python -m benchmarks [--quick] [--threads N] [--only NAME ...]

The GPU benchmark skips itself (exit 0) where torch sees no CUDA device.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

from benchmarks.report import BENCHMARKS, RESULTS, render


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--quick", action="store_true", help="tiny versions: a sanity check in a few minutes"
    )
    p.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: every core)"
    )
    p.add_argument("--only", nargs="+", choices=list(BENCHMARKS), default=list(BENCHMARKS))
    args = p.parse_args()
    flags = ["--quick"] * args.quick + (["--threads", str(args.threads)] if args.threads else [])
    failed = []
    for name in args.only:
        print(f"== {name}", flush=True)
        t0 = time.perf_counter()
        code = subprocess.run([sys.executable, "-m", f"benchmarks.{name}", *flags]).returncode
        print(
            f"== {name}: {'done' if code == 0 else f'FAILED (exit {code})'} in {time.perf_counter() - t0:.0f} s"
        )
        if code:
            failed.append(name)
    print(f"table: {render(RESULTS)}")
    if failed:
        sys.exit(f"benchmarks that failed to run: {', '.join(failed)}")


if __name__ == "__main__":
    main()
