"""Instructions per call of the gateway's hot path, counted by valgrind: a figure a noisy machine cannot move.

    python -m bench.instructions [--calls N]

Runs bench.hotpath (routing, the policy chain, the assertion signature, the log phase; upstream stubbed) under
`valgrind --tool=callgrind` with N and with 3N calls, for the bare and the full chain, and divides each difference by
2N so that start-up cancels out. The same code gives the same count whatever else the machine is doing, so the ratio
bare/full is the chain's cost without the noise of the load cases. Not in it: the HTTP server, the upstream client and
the kernel (the write(2) of audit and meter), which the load cases measure.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
COLLECTED = re.compile(r"Collected : (\d+)")
CONFIGS = ("none", "all")


class NoValgrind(RuntimeError):
    """valgrind is not installed; the figure is reported as not measured."""


def count(policies: str, calls: int) -> int:
    """Instructions of one whole `bench.hotpath` run (start-up included)."""
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        raise NoValgrind("valgrind is not installed (Debian's package `valgrind`)")
    argv = [valgrind, "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, "-m", "bench.hotpath",
            "--policies", policies, "--role", "local", "--calls", str(calls)]
    done = subprocess.run(argv, capture_output=True, text=True, cwd=REPO, timeout=900, check=False)
    found = COLLECTED.search(done.stderr)
    if done.returncode != 0 or found is None:
        raise RuntimeError(f"valgrind bench.hotpath --policies {policies} exited with {done.returncode}: "
                           f"{done.stderr.strip()[-400:]}")
    return int(found.group(1))


def run(calls: int = 1000) -> dict[str, float]:
    """Instructions per call for --policies none and all, and their ratio (two valgrind runs at a time)."""
    jobs = [(policies, n) for policies in CONFIGS for n in (calls, 3 * calls)]
    with ThreadPoolExecutor(max_workers=2) as pool:
        totals = dict(zip(jobs, pool.map(lambda job: count(*job), jobs), strict=True))
    per_call = {p: (totals[(p, 3 * calls)] - totals[(p, calls)]) / (2 * calls) for p in CONFIGS}
    return {
        "bare_per_call": round(per_call["none"]),
        "full_per_call": round(per_call["all"]),
        "full_vs_bare": round(per_call["none"] / per_call["all"], 3),
        "calls": calls,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.instructions", description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=1000, help="N: the runs make N and 3N calls (default 1000)")
    args = parser.parse_args(argv)
    figures = run(args.calls)
    bare, full, ratio = figures["bare_per_call"], figures["full_per_call"], figures["full_vs_bare"]
    sys.stdout.write(f"instructions per call: bare {bare:,.0f}, full {full:,.0f} (bare/full {ratio})\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
