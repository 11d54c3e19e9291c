"""Measuring one throughput case: check it answers 200, warm it up, load it at concurrency 32, then at a low rate.

The load runs on the load-generator core (wrk when installed, else `python -m bench.loadgen`); CPU seconds are read
from the server processes' trees before and after. A case whose answers are mostly errors gets no figure.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench import cpu, machine, wrk
from bench.loadgen import LoadResult
from bench.results import Results

REPO = Path(__file__).resolve().parent.parent
CONCURRENCY = 32
MAX_ERROR_SHARE = 0.01


class NotMeasured(Exception):
    """A case could not be measured; the message says why, for the report."""


@dataclass
class Plan:
    """How long each phase lasts; the quick run shortens all of them."""

    duration: float = 10.0
    warmup: float = 2.0
    low_rate: float = 200.0
    low_duration: float = 5.0
    use_wrk: bool = True


@dataclass
class Case:
    """One throughput case: the URL the load generator calls, its headers, and the processes whose CPU counts."""

    name: str
    url: str
    headers: dict[str, str] = field(default_factory=dict)
    cpu_pids: list[int] = field(default_factory=list)
    # Called before each load phase, e.g. to sign a fresh client token so a long run never uses an expired one.
    refresh_headers: Callable[[], dict[str, str]] | None = None
    # For single-use header values (a connector's assertions): makes N values as (header name, values).
    tokens: Callable[[int], tuple[str, list[str]]] | None = None
    token_rate_cap: float = 5000.0  # values made per second of load; a case that reaches it is reported as capped


def python_load(url: str, *, headers: dict[str, str], duration: float, rate: float | None = None,
                varying: tuple[str, Path] | None = None) -> LoadResult:
    """Run the Python generator in its own process, pinned to the load-generator core."""
    args = [*machine.loadgen_prefix(), sys.executable, "-m", "bench.loadgen", url, "--duration", str(duration),
            "--connections", str(CONCURRENCY)]
    if rate:
        args += ["--rate", str(rate)]
    for name, value in headers.items():
        args += ["-H", f"{name}: {value}"]
    if varying:
        args += ["--vary-header", f"{varying[0]}={varying[1]}"]
    done = subprocess.run(args, capture_output=True, text=True, cwd=REPO, timeout=duration + 120, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"bench.loadgen exited with {done.returncode}: {done.stderr.strip()[-500:]}")
    data = json.loads(done.stdout.strip().splitlines()[-1])
    return LoadResult(**data)


def load(url: str, headers: dict[str, str], duration: float, use_wrk: bool,
         varying: tuple[str, Path] | None = None) -> LoadResult:
    if use_wrk and wrk.available():
        return wrk.run(url, connections=CONCURRENCY, duration=duration, headers=headers,
                       prefix=machine.loadgen_prefix(), varying=varying)
    return python_load(url, headers=headers, duration=duration, varying=varying)


_token_files: list[Path] = []


def _forget_tokens() -> None:
    while _token_files:
        _token_files.pop().unlink(missing_ok=True)


def single_use(case: Case, seconds: float, rate: float | None = None) -> tuple[str, Path] | None:
    """Fresh single-use header values for one phase, written one per line to a temp file."""
    if case.tokens is None:
        return None
    name, values = case.tokens(int((rate or case.token_rate_cap) * seconds) + 64)
    fd, path = tempfile.mkstemp(prefix="lienthong-tokens-", suffix=".txt")
    _token_files.append(Path(path))
    with os.fdopen(fd, "w") as f:
        f.write("\n".join(values) + "\n")
    return name, Path(path)


def preflight(case: Case, headers: dict[str, str]) -> None:
    try:
        r = httpx.get(case.url, headers=headers, timeout=10.0)
    except httpx.HTTPError as exc:
        raise NotMeasured(f"{case.url} did not answer: {exc!r}") from exc
    if r.status_code != 200:
        raise NotMeasured(f"{case.url} answered {r.status_code} instead of 200: {r.text[:300]}")


def _check(result: LoadResult, what: str) -> None:
    bad = result.errors + result.non2xx
    if result.requests == 0:
        raise NotMeasured(f"{what}: no request completed ({result.errors} socket errors)")
    if bad > MAX_ERROR_SHARE * result.requests:
        raise NotMeasured(f"{what}: {bad} of {result.requests} requests failed or were not 2xx ({result.statuses})")


def run_case(results: Results, case: Case, plan: Plan, log: Callable[[str], None]) -> None:
    """Measure one case into `results`, or record why it could not be measured."""
    try:
        _run_case(results, case, plan, log)
    finally:
        _forget_tokens()


def _run_case(results: Results, case: Case, plan: Plan, log: Callable[[str], None]) -> None:
    try:
        headers = case.refresh_headers() if case.refresh_headers else case.headers
        one = case.tokens(1) if case.tokens else None
        preflight(case, {**headers, one[0]: one[1][0]} if one else headers)
        if plan.warmup > 0:
            load(case.url, headers, plan.warmup, plan.use_wrk, single_use(case, plan.warmup))
        headers = case.refresh_headers() if case.refresh_headers else headers
        varying = single_use(case, plan.duration)
        before = cpu.tree_cpu_seconds(case.cpu_pids) if case.cpu_pids else None
        result = load(case.url, headers, plan.duration, plan.use_wrk, varying)
        after = cpu.tree_cpu_seconds(case.cpu_pids) if case.cpu_pids else None
        _check(result, "load at concurrency 32")
        if case.tokens and result.rps > 0.9 * case.token_rate_cap:
            results.notes.append(f"{case.name}: reached the {case.token_rate_cap:g}/s of single-use tokens made; "
                                 "its throughput may be higher")
        results.add_load(case.name, result, None if before is None or after is None else after - before)
        log(f"{case.name}: {result.rps:,.0f} req/s, p50 {result.p50_ms:.2f} ms, p99 {result.p99_ms:.2f} ms")
    except NotMeasured as exc:
        results.skip(case.name, str(exc))
        log(f"{case.name}: not measured: {exc}")
        return
    except (RuntimeError, OSError, ValueError, subprocess.TimeoutExpired) as exc:
        results.skip(case.name, f"the load run failed: {exc}")
        log(f"{case.name}: not measured: {exc}")
        return
    try:
        headers = case.refresh_headers() if case.refresh_headers else headers
        low = python_load(case.url, headers=headers, duration=plan.low_duration, rate=plan.low_rate,
                          varying=single_use(case, plan.low_duration, plan.low_rate))
        _check(low, f"low rate {plan.low_rate:g}/s")
        results.add_low(case.name, low, plan.low_rate)
    except (NotMeasured, RuntimeError, OSError, ValueError, subprocess.TimeoutExpired) as exc:
        results.skip(f"{case.name}_low_rate", str(exc))
        log(f"{case.name} low rate: not measured: {exc}")
