"""The scale cases: snapshot build and delivery, a revocation at national scale (registry CPU, delta size, 100
gateways, cold start), data generation, lookup, metering, and the hot path's instructions per call
(bench/instructions.py, full run only).

Most are other parts' `run()` functions (bench/registry_snapshot.py, bench/datagen_bench.py, bench/meter_bench.py);
each runs in its own process (`python -m bench.scale CASE`) with a time limit, so one that crashes or hangs costs
only its own figure. The revocation case is bench/revocation.py.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import inspect
import json
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.results import Results

REPO = Path(__file__).resolve().parent.parent
CASES = ("snapshot", "revocation", "datagen", "lookup", "meter", "instructions", "txlog", "tracker")
MARKER = "SCALEJSON "

# case -> (module, full-run arguments, quick-run arguments or None (full run only), time limit in s for full / quick)
CALLS: dict[str, tuple[str, dict[str, Any], dict[str, Any] | None, tuple[float, float]]] = {
    "snapshot": (
        "bench.registry_snapshot",
        {"services": 10_000, "grants": 100_000},
        {"services": 10_000, "grants": 100_000},
        (240, 120),
    ),
    # 1,000 and 10,000 services (ten grants each) x 10 and 100 gateways; quick: 1,000 services, 10 gateways
    "revocation": (
        "bench.revocation",
        {"services": 10_000, "gateways": 100, "steps": 2},
        {"services": 1_000, "gateways": 10, "steps": 1},
        (1500, 120),
    ),
    "datagen": ("bench.datagen_bench", {"people": 10_000_000}, {"people": 30_000}, (1500, 60)),
    "meter": ("bench.meter_bench", {}, {}, (180, 60)),
    "instructions": ("bench.instructions", {"calls": 1000}, None, (900, 0)),
    # the central transaction log (issue 18): ingest into PostgreSQL and a one-day, one-client query, 2M and 20M
    "txlog": ("bench.txlog_bench", {"sizes": (2_000_000, 20_000_000)}, {"sizes": (100_000,)}, (7200, 300)),
    # the data tracker (issue 19): one person's report over a year, 2M and 20M records over 2M people
    "tracker": ("bench.tracker_bench", {"sizes": (2_000_000, 20_000_000)}, {"sizes": (200_000,)}, (1800, 300)),
}


def _call(module_name: str, kwargs: dict[str, Any], workdir: Path) -> dict[str, Any]:
    """Import the module and call run() with the arguments it accepts (plus a Redis URL or folder if it asks)."""
    module = importlib.import_module(module_name)
    fn: Callable[..., Any] = module.run
    params = inspect.signature(fn).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    args = {k: v for k, v in kwargs.items() if k in params or takes_any}
    redis = None
    try:
        if "redis_url" in params:
            from lienthong.redis_connection import EmbeddedRedis

            redis = EmbeddedRedis(workdir / "redis", durable=False)
            args["redis_url"] = redis.start()
        for name in ("workdir", "work_dir", "data_dir", "tmp_dir", "out"):
            if name in params:
                args[name] = workdir / name
        result = fn(**args)
    finally:
        if redis is not None:
            redis.stop()
    if not isinstance(result, dict):
        raise TypeError(f"{module_name}.run() returned {type(result).__name__}, not a dict of figures")
    return {**result, "_args": {k: v for k, v in args.items() if isinstance(v, int | float | str)}}


def _arguments(case: str, quick: bool) -> dict[str, Any]:
    """The case's run() arguments for this run; a full-run-only case has none in the quick run."""
    _module, full, short, _limits = CALLS[case]
    if not quick:
        return full
    if short is None:
        raise RuntimeError("measured in the full run only")
    return short


def run_one(case: str, quick: bool, workdir: Path, timeout: float | None = None) -> dict[str, Any]:
    """Run one scale case in a child process; raise RuntimeError with the reason when it yields no figures."""
    module, _full, _short, limits = CALLS[case]
    kwargs = _arguments(case, quick)
    if importlib.util.find_spec(module) is None:
        raise RuntimeError(f"{module.replace('.', '/')}.py does not exist yet")
    limit = timeout or (limits[1] if quick else limits[0])
    args = [sys.executable, "-m", "bench.scale", case, "--workdir", str(workdir)] + (["--quick"] if quick else [])
    try:
        done = subprocess.run(args, capture_output=True, text=True, cwd=REPO, timeout=limit, check=False)
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"{module}.run({_show(kwargs)}) took over {limit:g} s") from exc
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(MARKER):
            data: dict[str, Any] = json.loads(line[len(MARKER) :])
            if "error" in data:
                raise RuntimeError(data["error"])
            return data
    tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
    raise RuntimeError(f"{module}.run() exited with {done.returncode} and no figures: {' | '.join(tail)}")


def _show(kwargs: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:_}" if isinstance(v, int) else f"{k}={v!r}" for k, v in kwargs.items())


def run_all(cases: set[str], results: Results, *, quick: bool, log: Callable[[str], None], workdir: Path) -> None:
    """Run the selected scale cases into `results`; `lookup` comes out of the data-generation run."""
    datagen: dict[str, Any] | None = None
    datagen_error = "the data-generation case was not selected"
    for case in CASES:
        if case == "lookup" or (case not in cases and not (case == "datagen" and "lookup" in cases)):
            continue
        log(f"scale case {case} ...")
        try:
            figures = run_one(case, quick, Path(tempfile.mkdtemp(prefix=f"{case}-", dir=workdir)))
        except RuntimeError as exc:
            if case == "datagen":
                datagen_error = str(exc)
            if case in cases:
                results.skip(case, str(exc))
            log(f"{case}: not measured: {exc}")
            continue
        used = figures.pop("_args", {})
        if case == "datagen":
            datagen = dict(figures)
            if "lookup" in cases:  # the lookup figures are reported once, under lookup
                figures = {k: v for k, v in figures.items() if "lookup" not in k}
        if case in cases:
            results.add_scale(case, figures)
            if used:
                results.notes.append(f"{case}: {CALLS[case][0]}.run({_show(used)})")
        log(f"{case}: {figures}")
    if "lookup" in cases:
        lookup = {k.removeprefix("lookup_"): v for k, v in (datagen or {}).items() if "lookup" in k}
        if lookup:
            results.add_scale("lookup", lookup)
        else:
            reason = datagen_error if datagen is None else "bench.datagen_bench.run() returned no lookup figure"
            results.skip("lookup", reason)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description="run one scale case, print its JSON")
    parser.add_argument("case", choices=sorted(CALLS))
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args(argv)
    module = CALLS[args.case][0]
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix=f"lienthong-{args.case}-"))
    try:
        out: dict[str, Any] = _call(module, _arguments(args.case, args.quick), workdir)
    except Exception as exc:  # any failure of another part's code becomes a "not measured" reason
        traceback.print_exc()
        out = {"error": f"{module}.run() raised {type(exc).__name__}: {exc}"}
    sys.stdout.write(MARKER + json.dumps(out, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
