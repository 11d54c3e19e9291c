"""Measuring the throughput cases: check each answers 200, then load them in interleaved rounds, then at a low rate.

Every case's processes run for the whole phase, so that round r loads case after case, a few seconds each, and
round r+1 does it again, in an order rotated by one. Two cases compared in a ratio are then measured seconds apart
in every round rather than minutes apart once (bench/results.py takes the medians). Each load is warmed up first,
runs on the load-generator core (wrk when installed, else `python -m bench.loadgen`), and reads the CPU seconds of
the case's server processes before and after. A case whose answers are mostly errors, in any round, gets no figure.
A TLS case calls an https:// URL: wrk speaks TLS but cannot present a client certificate, so under load the client
authenticates as in the plaintext cases (its token); bench.loadgen, at the low rate, also presents the case's client
certificate (`Case.tls`), as X-Road clients do.
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench import cpu, loadgen, machine, wrk
from bench.loadgen import LoadResult
from bench.results import Results
from lienthong import pki

REPO = Path(__file__).resolve().parent.parent
CONCURRENCY = 32
MAX_ERROR_SHARE = 0.01


class NotMeasured(Exception):
    """A case could not be measured; the message says why, for the report."""


@dataclass
class Plan:
    """How long each phase lasts; the quick run shortens all of them."""

    duration: float = 3.0  # per round
    warmup: float = 1.0  # before each round's load
    rounds: int = 5
    low_rate: float = 200.0  # at most; a case that cannot take 4x this is loaded at a quarter of its own rate
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
    # For an https:// URL: the CA to verify the server with and the client certificate bench.loadgen presents.
    tls: pki.CertFiles | None = None

    def phase_headers(self) -> dict[str, str]:
        """The headers for the next load phase: refreshed when the case says how, else the fixed ones."""
        return self.refresh_headers() if self.refresh_headers else self.headers


def python_load(url: str, *, headers: dict[str, str], duration: float, rate: float | None = None,
                varying: tuple[str, Path] | None = None, tls: pki.CertFiles | None = None) -> LoadResult:
    """Run the Python generator in its own process, pinned to the load-generator core."""
    args = [*machine.loadgen_prefix(), sys.executable, "-m", "bench.loadgen", url, "--duration", str(duration),
            "--connections", str(CONCURRENCY)]
    if rate:
        args += ["--rate", str(rate)]
    for name, value in headers.items():
        args += ["-H", f"{name}: {value}"]
    if varying:
        args += ["--vary-header", f"{varying[0]}={varying[1]}"]
    if tls is not None:
        args += ["--tls-dir", str(tls.directory)]
    done = subprocess.run(args, capture_output=True, text=True, cwd=REPO, timeout=duration + 120, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"bench.loadgen exited with {done.returncode}: {done.stderr.strip()[-500:]}")
    data = json.loads(done.stdout.strip().splitlines()[-1])
    return LoadResult(**data)


def load(url: str, headers: dict[str, str], duration: float, use_wrk: bool,
         varying: tuple[str, Path] | None = None, tls: pki.CertFiles | None = None) -> LoadResult:
    if use_wrk and wrk.available():
        return wrk.run(url, connections=CONCURRENCY, duration=duration, headers=headers,
                       prefix=machine.loadgen_prefix(), varying=varying)
    return python_load(url, headers=headers, duration=duration, varying=varying, tls=tls)


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
    verify: bool | ssl.SSLContext = True
    if case.tls is not None:
        verify = loadgen.tls_context(case.tls.directory)
    try:
        r = httpx.get(case.url, headers=headers, timeout=10.0, verify=verify)
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


def run_rounds(results: Results, cases: list[Case], plan: Plan, log: Callable[[str], None]) -> None:
    """Measure every case into `results`, or record why it could not be measured."""
    live = []
    for case in cases:
        try:
            headers = case.phase_headers()
            one = case.tokens(1) if case.tokens else None
            preflight(case, {**headers, one[0]: one[1][0]} if one else headers)
            live.append(case)
        except NotMeasured as exc:
            results.skip(case.name, str(exc))
            log(f"{case.name}: not measured: {exc}")
    for round_no in range(plan.rounds):
        shift = round_no % len(live) if live else 0
        for case in live[shift:] + live[:shift]:
            if case.name in results.not_measured:
                continue
            try:
                _load_round(results, case, plan, round_no, log)
            except (NotMeasured, RuntimeError, OSError, ValueError, subprocess.TimeoutExpired) as exc:
                why = str(exc) if isinstance(exc, NotMeasured) else f"the load run failed: {exc}"
                results.drop(case.name, f"round {round_no + 1}: {why}")
                log(f"{case.name}: not measured: round {round_no + 1}: {why}")
            finally:
                _forget_tokens()
    for case in live:
        if case.name not in results.not_measured:
            try:
                _low_rate(results, case, plan, log)
            finally:
                _forget_tokens()


def _load_round(results: Results, case: Case, plan: Plan, round_no: int, log: Callable[[str], None]) -> None:
    headers = case.phase_headers()
    if plan.warmup > 0:
        load(case.url, headers, plan.warmup, plan.use_wrk, single_use(case, plan.warmup), case.tls)
    varying = single_use(case, plan.duration)
    before = cpu.tree_cpu_seconds(case.cpu_pids) if case.cpu_pids else None
    result = load(case.url, headers, plan.duration, plan.use_wrk, varying, case.tls)
    after = cpu.tree_cpu_seconds(case.cpu_pids) if case.cpu_pids else None
    _check(result, f"load at concurrency {CONCURRENCY}")
    if case.tokens and result.rps > 0.9 * case.token_rate_cap:
        results.notes.append(f"{case.name}: reached the {case.token_rate_cap:g}/s of single-use tokens made; "
                             "its throughput may be higher")
    results.add_load(case.name, result, None if before is None or after is None else after - before, round_no)
    log(f"{case.name} (round {round_no + 1}/{plan.rounds}): {result.rps:,.0f} req/s, p50 {result.p50_ms:.2f} ms, "
        f"p99 {result.p99_ms:.2f} ms")


def low_rate_for(ceiling: float, loaded_rps: float | None) -> float:
    """A rate that keeps the server's core mostly idle: queueing would otherwise be read as per-hop latency."""
    if not loaded_rps:
        return ceiling
    return float(min(ceiling, max(10, round(loaded_rps / 4))))


def _low_rate(results: Results, case: Case, plan: Plan, log: Callable[[str], None]) -> None:
    """Latency when nothing is saturated: at the plan's rate, or a quarter of what the case carried under load."""
    try:
        rate = low_rate_for(plan.low_rate, results.median_rps(case.name))
        headers = case.phase_headers()
        low = python_load(case.url, headers=headers, duration=plan.low_duration, rate=rate,
                          varying=single_use(case, plan.low_duration, rate), tls=case.tls)
        _check(low, f"low rate {rate:g}/s")
        results.add_low(case.name, low, rate)
    except (NotMeasured, RuntimeError, OSError, ValueError, subprocess.TimeoutExpired) as exc:
        results.skip(f"{case.name}_low_rate", str(exc))
        log(f"{case.name} low rate: not measured: {exc}")
