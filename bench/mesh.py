"""The gateway and connector cases: a registry, gateways and a connector started as real processes, then loaded.

The mesh is built with tests/mesh_support.py's `Mesh` (the gateway part's reusable fixture: it signs the snapshot
document and serves it with the protocol's long poll), so the benchmark and the end-to-end tests stand on the same
setup. Gateways run pinned to the server core with one worker, so every ratio against nginx is per core.

Layout: `national` hosts the bench service (upstream = the nginx upstream) and the population service (upstream = the
population connector); `nghean` is a province whose consumer reaches national's services over one mesh hop.
Each case is measured only when the parts it needs exist; otherwise it is reported as not measured, with why.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import connector, machine
from bench.measure import Case, Plan, run_case
from bench.results import Results
from lienthong.redis_connection import EmbeddedRedis
from lienthong.supervisor import Supervisor

Log = Callable[[str], None]
LIENTHONG = str(Path(sys.executable).parent / "lienthong")

BENCH_SERVICE = "VN/GOV/BENCH/echo/record"
LOCAL_CONSUMER = "VN/GOV/BTP/justice"  # home gateway national: one hop
PROVINCE_CONSUMER = "VN/PROV/NGHEAN/civil-status"  # home gateway nghean: two hops
PURPOSE = "benchmark"
SUBJECT = "001203004567"
FULL_POLICIES = "all"
TRACE_SAMPLING = "0.01"
GRANT_FIELDS = ["id", "full_name", "birth_date"]  # the record has one field more, so minimize has work to do


def command_exists(*words: str) -> bool:
    """True when `lienthong WORDS --help` works, i.e. the part providing that command has landed."""
    try:
        done = subprocess.run([LIENTHONG, *words, "--help"], capture_output=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def missing_parts() -> str | None:
    if not command_exists("gateway", "serve"):
        return "`lienthong gateway serve` does not exist yet"
    if importlib.util.find_spec("tests.mesh_support") is None:
        return "tests/mesh_support.py (the gateway part's mesh fixture) does not exist yet"
    return None


class BenchMesh:
    """The catalogue and processes of the gateway cases; `start_gateway` (re)starts one with given policies."""

    def __init__(self, tmp: Path, upstream_url: str, redis_url: str) -> None:
        from tests.mesh_support import Mesh  # the gateway part's fixture; imported late as it may not exist yet

        self.redis_url = redis_url
        self.workers = 1
        self.mesh: Any = Mesh(root=tmp / "mesh", log_dir=tmp / "logs", policies="none", redis_url=redis_url,
                              workers=1)
        self.national = self.mesh.add_gateway("national")
        self.nghean = self.mesh.add_gateway("nghean")
        for member, home in (("VN/GOV/BENCH", "national"), ("VN/GOV/BTP", "national"), ("VN/GOV/BCA", "national"),
                             ("VN/PROV/NGHEAN", "nghean")):
            self.mesh.add_member(member, home)
        for subsystem in ("VN/GOV/BENCH/echo", LOCAL_CONSUMER, "VN/GOV/BCA/population", PROVINCE_CONSUMER):
            self.mesh.add_subsystem(subsystem)
        self.mesh.add_client(LOCAL_CONSUMER)
        self.mesh.add_client(PROVINCE_CONSUMER)
        self.mesh.add_service(BENCH_SERVICE, "national", upstream_url, [("GET", "/record/{id}")], subject_param="id")
        for i, consumer in enumerate((LOCAL_CONSUMER, PROVINCE_CONSUMER)):
            self.mesh.add_grant(f"g-bench-{i}", consumer, BENCH_SERVICE, [PURPOSE], fields=GRANT_FIELDS,
                                quota={"per_minute": 100_000_000, "per_day": 1_000_000_000})

    def add_population(self, connector_url: str) -> None:
        self.mesh.add_service(connector.SERVICE, "national", connector_url, [("GET", "/persons/{id}")],
                              subject_param="id")
        for i, consumer in enumerate((LOCAL_CONSUMER, PROVINCE_CONSUMER)):
            self.mesh.add_grant(f"g-pop-{i}", consumer, connector.SERVICE, [PURPOSE], fields=connector.FIELDS,
                                quota={"per_minute": 100_000_000, "per_day": 1_000_000_000})

    def publish_and_start_registry(self) -> None:
        self.mesh.publish()
        self.mesh.start_registry()

    def start_gateway(self, code: str, policies: str) -> Any:
        """Start (or restart) gateway `code` pinned to the server core; wait until it is ready."""
        from tests.procs import Proc

        gw = self.mesh.gateways[code]
        if gw.proc is not None:
            gw.proc.stop()
        # The argv is built here from `lienthong gateway serve --help`, the gateway's public contract.
        argv = [LIENTHONG, "gateway", "serve", "--code", gw.code, "--host", "127.0.0.1", "--port", str(gw.port),
                "--registry", self.mesh.registry_url, "--registry-key", str(self.mesh.root / "registry.jwk"),
                "--key", str(gw.key.path), "--kid", gw.key.kid, "--data-dir", str(gw.data_dir),
                "--workers", str(self.workers), "--policies", policies, "--redis-url", self.redis_url,
                "--trace-sample-ratio", TRACE_SAMPLING]
        gw.proc = Proc(f"gateway-{code}-{policies.replace(',', '-')}", [*machine.server_prefix(), *argv],
                       self.mesh.log_dir).start()
        gw.proc.wait_http(f"{gw.url}/readyz", timeout=60)
        return gw

    def headers(self, consumer: str, home: str) -> Callable[[], dict[str, str]]:
        """A fresh client token per load phase: signed once, valid 300 s (the protocol's maximum)."""
        from tests.mesh_support import client_token

        def make() -> dict[str, str]:
            token = client_token(self.mesh.clients[consumer], consumer, home, lifetime=300)
            return {"Authorization": f"Bearer {token}", "X-Road-Client": consumer, "X-Purpose": PURPOSE}

        return make

    def pid(self, code: str) -> list[int]:
        gw = self.mesh.gateways[code]
        return [gw.proc.process.pid] if gw.proc is not None and gw.proc.process is not None else []

    def stop(self) -> None:
        self.mesh.stop()


def url(gateway: Any, service: str, path: str) -> str:
    return f"{gateway.url}/r1/{service}{path}"


def run_cases(cases: list[str], plan: Plan, results: Results, sup: Supervisor, tmp: Path, upstream_url: str,
              log: Log) -> None:
    reason = missing_parts()
    if reason:
        for case in cases:
            results.skip(case, reason)
            log(f"{case}: not measured: {reason}")
        return
    redis = EmbeddedRedis(tmp / "redis", durable=False)
    bench: BenchMesh | None = None
    pop: connector.Population | None = None
    try:
        redis.start()
        bench = BenchMesh(tmp, upstream_url, redis.url)
        want_connector = any(c.startswith("connector_") for c in cases)
        if want_connector:
            try:
                pop = connector.Population.prepare(tmp / "population", quick=results.quick, log=log)
                bench.add_population(pop.url)
                pop.start(bench.national.key, tmp / "logs")
            except (connector.Unavailable, RuntimeError) as exc:
                for case in (c for c in cases if c.startswith("connector_")):
                    results.skip(case, str(exc))
                    log(f"{case}: not measured: {exc}")
                pop = None
        bench.publish_and_start_registry()
        _gateway_cases(bench, cases, plan, results, log)
        if pop is not None:
            _connector_cases(bench, pop, cases, plan, results, log)
    except Exception as exc:  # a part that fails to start must cost its figures, not the whole run
        why = f"the mesh did not start: {type(exc).__name__}: {str(exc)[:1500]}"
        for case in cases:
            if f"{case}_rps" not in results.figures and case not in results.not_measured:
                results.skip(case, why)
        log(why)
    finally:
        if pop is not None:
            pop.stop()
        if bench is not None:
            bench.stop()
        redis.stop()
    del sup


def _start_or_skip(bench: BenchMesh, code: str, policies: str, results: Results, skip: list[str], log: Log) -> bool:
    try:
        bench.start_gateway(code, policies)
        return True
    except RuntimeError as exc:
        why = f"gateway {code} with --policies {policies} did not start: {str(exc)[-1200:]}"
        for case in skip:
            results.skip(case, why)
        log(why)
        return False


def _gateway_cases(bench: BenchMesh, cases: list[str], plan: Plan, results: Results, log: Log) -> None:
    path = url(bench.national, BENCH_SERVICE, f"/record/{SUBJECT}")
    local = bench.headers(LOCAL_CONSUMER, "national")
    if "gateway_bare" in cases and _start_or_skip(bench, "national", "none", results, ["gateway_bare"], log):
        run_case(results, Case("gateway_bare", path, cpu_pids=bench.pid("national"), refresh_headers=local), plan, log)
    full = [c for c in cases if c != "gateway_bare"]
    if not full or not _start_or_skip(bench, "national", FULL_POLICIES, results, full, log):
        return
    if "gateway_full_1hop" in cases:
        run_case(results, Case("gateway_full_1hop", path, cpu_pids=bench.pid("national"), refresh_headers=local),
                 plan, log)
    two = [c for c in cases if c in ("gateway_full_2hop", "connector_2hop")]
    if two and _start_or_skip(bench, "nghean", FULL_POLICIES, results, two, log) and "gateway_full_2hop" in cases:
        province = bench.headers(PROVINCE_CONSUMER, "nghean")
        run_case(results, Case("gateway_full_2hop", url(bench.nghean, BENCH_SERVICE, f"/record/{SUBJECT}"),
                               cpu_pids=bench.pid("nghean") + bench.pid("national"), refresh_headers=province),
                 plan, log)


def _connector_cases(bench: BenchMesh, pop: connector.Population, cases: list[str], plan: Plan, results: Results,
                     log: Log) -> None:
    if "connector_direct" in cases:
        pop.measure_direct(results, plan, log, bench.national.key)
    if "connector_2hop" in cases and "connector_2hop" not in results.not_measured:
        province = bench.headers(PROVINCE_CONSUMER, "nghean")
        target = url(bench.nghean, connector.SERVICE, f"/persons/{pop.person_id}")
        run_case(results, Case("connector_2hop", target, refresh_headers=province,
                               cpu_pids=bench.pid("nghean") + bench.pid("national") + pop.pids()), plan, log)
