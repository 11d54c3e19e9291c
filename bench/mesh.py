"""The gateway and connector cases: a registry, gateways and a connector started as real processes, then loaded.

The mesh is built with tests/mesh_support.py's `Mesh` (the gateway part's reusable fixture: it signs the snapshot
document and serves it with the protocol's long poll), so the benchmark and the end-to-end tests stand on the same
setup. Gateways run pinned to the server core with one worker, so every ratio against nginx is per core.

Layout: `national` hosts the bench service (upstream = the nginx upstream) and the population service (upstream = the
population connector); `nghean` is a province whose consumer reaches national's services over one mesh hop. A
second `national` process with every policy off serves the bare case, so that all cases run side by side for the
interleaved rounds (bench/measure.py). Each case is measured only when the parts it needs exist; otherwise it is
reported as not measured, with why.

The TLS cases (`full_tls`, `full_tls_2hop`) run a second mesh of the same layout beside the first, in the same run:
its gateways serve HTTPS with certificates from the bench CA (bench/tls.py), call the upstream's HTTPS port
presenting their own certificate and checking the upstream's identity (the bench service's provider subsystem), and
reach each other with mutual TLS (national's base URL is https). Its snapshot comes from the test harness's stand-in
registry (the same signed-snapshot protocol) so that its `pki` section names the bench CA; its gateways keep their
Redis state in another database of the same Redis. The plaintext cases pass --insecure-http, as they always ran.
"""

from __future__ import annotations

import contextlib
import importlib.util
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from bench import connector, machine
from bench.measure import Case
from bench.results import Results
from bench.tls import ECHO_PROVIDER, BenchPKI, wait_https
from lienthong import pki
from lienthong.redis_connection import EmbeddedRedis, free_port

Log = Callable[[str], None]
LIENTHONG = str(Path(sys.executable).parent / "lienthong")

BENCH_SERVICE = f"{ECHO_PROVIDER}/record"
LOCAL_CONSUMER = "VN/GOV/BTP/justice"  # home gateway national: one hop
PROVINCE_CONSUMER = "VN/PROV/NGHEAN/civil-status"  # home gateway nghean: two hops
PURPOSE = "benchmark"
SUBJECT = "001203004567"
FULL_POLICIES = "all"
TRACE_SAMPLING = "0.01"
GRANT_FIELDS = ["id", "full_name", "birth_date"]  # the record has one field more, so minimize has work to do
TLS_CASES = ("full_tls", "full_tls_2hop")


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
    """The catalogue and processes of the gateway cases; `start_gateway` starts one with given policies.
    With `certs`, every gateway serves and calls over TLS (module docstring), and there is no bare gateway."""

    def __init__(self, tmp: Path, upstream_url: str, redis_url: str, certs: BenchPKI | None = None) -> None:
        # the gateway part's fixture; imported late as it may not exist yet
        from tests.mesh_support import GatewayProc, Mesh

        self.redis_url = redis_url
        self.workers = 1
        self.certs = certs
        root, logs = (tmp / "mesh", tmp / "logs") if certs is None else (tmp / "mesh-tls", tmp / "logs" / "tls")
        self.mesh: Any = Mesh(root=root, log_dir=logs, policies="none", redis_url=redis_url, workers=1,
                              registry="real" if certs is None else "standin", tls=False)  # fmt: skip
        # tls=False: the harness's own TLS stays off; this mesh sets its TLS itself (the bench CA, --tls-dir below)
        self.national = self.mesh.add_gateway("national")
        self.nghean = self.mesh.add_gateway("nghean")
        # the hop's address, as this mesh serves it (set here, whatever the harness's default scheme)
        for entry in self.mesh.doc["gateways"]:
            entry["base_url"] = self.base(self.mesh.gateways[entry["code"]])
        if certs is not None:
            self.mesh.doc["pki"] = {"ca": [certs.ca_path.read_text()], "revoked": []}
        # the same gateway identity on its own port and files; not in the snapshot, so no mesh hop reaches it
        self.bare = GatewayProc("national", free_port(), self.national.key, self.national.data_dir.parent / "bare")
        for member, home in (("VN/GOV/BENCH", "national"), ("VN/GOV/BTP", "national"), ("VN/GOV/BCA", "national"),
                             ("VN/PROV/NGHEAN", "nghean")):
            self.mesh.add_member(member, home)
        for subsystem in (ECHO_PROVIDER, LOCAL_CONSUMER, "VN/GOV/BCA/population", PROVINCE_CONSUMER):
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

    def base(self, gw: Any) -> str:
        return f"{'http' if self.certs is None else 'https'}://127.0.0.1:{gw.port}"

    def client_tls(self, consumer: str) -> pki.CertFiles | None:
        """What a case's load generator verifies with and presents: the consumer's certificate (TLS mesh only)."""
        return None if self.certs is None else self.certs.client(consumer)

    def start_gateway(self, gw: Any, policies: str) -> None:
        """Start one gateway process pinned to the server core; wait until it is ready."""
        from tests.procs import Proc

        # The argv is built here from `lienthong gateway serve --help`, the gateway's public contract.
        argv = [LIENTHONG, "gateway", "serve", "--code", gw.code, "--host", "127.0.0.1", "--port", str(gw.port),
                "--registry", self.mesh.registry_url, "--registry-key", str(self.mesh.root / "registry.jwk"),
                "--key", str(gw.key.path), "--kid", gw.key.kid, "--data-dir", str(gw.data_dir),
                "--workers", str(self.workers), "--policies", policies, "--redis-url", self.redis_url,
                "--trace-sample-ratio", TRACE_SAMPLING]
        # plain HTTP for the cases kept from before TLS, said explicitly: a gateway refuses to start without TLS
        argv += ["--insecure-http"] if self.certs is None else ["--tls-dir", str(self.certs.gateway(gw.code).directory)]
        name = f"gateway-{gw.code}-{policies.replace(',', '-')}" + ("" if self.certs is None else "-tls")
        gw.proc = Proc(name, [*machine.server_prefix(), *argv], self.mesh.log_dir).start()
        if self.certs is None:
            gw.proc.wait_http(f"{self.base(gw)}/readyz", timeout=60)
            return
        proc = gw.proc

        def gone() -> str | None:
            done = proc.process is None or proc.process.poll() is not None
            return f"{name} exited:\n{proc.log_tail()}" if done else None

        wait_https(f"{self.base(gw)}/readyz", self.certs.context(), gone, timeout=60)

    def headers(self, consumer: str, home: str) -> Callable[[], dict[str, str]]:
        """A fresh client token per load phase: signed once, valid 300 s (the protocol's maximum)."""
        from tests.mesh_support import client_token

        def make() -> dict[str, str]:
            token = client_token(self.mesh.clients[consumer], consumer, home, lifetime=300)
            return {"Authorization": f"Bearer {token}", "X-Road-Client": consumer, "X-Purpose": PURPOSE}

        return make

    def url(self, gw: Any, service: str, path: str) -> str:
        return f"{self.base(gw)}/r1/{service}{path}"

    @staticmethod
    def pid(gw: Any) -> list[int]:
        return [gw.proc.process.pid] if gw.proc is not None and gw.proc.process is not None else []

    def stop(self) -> None:
        if self.bare.proc is not None:
            self.bare.proc.stop()
        self.mesh.stop()


@contextlib.contextmanager
def cases_started(
    cases: list[str], results: Results, tmp: Path, upstream_url: str, log: Log,
    tls: tuple[BenchPKI, str] | None = None,
) -> Iterator[list[Case]]:  # fmt: skip
    """Start what the wanted mesh cases need and yield them as load cases; stop it all afterwards. `tls` is the bench
    CA and the upstream's HTTPS URL, for the TLS cases."""
    reason = missing_parts()
    if reason:
        _skip(cases, reason, results, log)
        yield []
        return
    plain = [c for c in cases if c not in TLS_CASES]
    secure = [c for c in cases if c in TLS_CASES]
    if secure and tls is None:
        _skip(secure, "no bench CA or HTTPS upstream (see the nginx cases)", results, log)
        secure = []
    redis = EmbeddedRedis(tmp / "redis", durable=False)
    with contextlib.ExitStack() as stack:
        stack.callback(redis.stop)
        started: list[Case] = []
        try:
            redis.start()
        except Exception as exc:  # reported as the reason the cases have no figure
            _skip(cases, f"Redis did not start: {exc}", results, log)
        else:
            if plain:
                started += _mesh_cases(stack, plain, results, tmp, upstream_url, redis.url, log)
            if secure and tls is not None:
                # the TLS mesh's gateways have the same codes: their quota and meter state goes to database 1
                redis_tls = redis.url.rsplit("/", 1)[0] + "/1"
                started += _mesh_cases(stack, secure, results, tmp, tls[1], redis_tls, log, tls[0])
        yield started


def _skip(cases: list[str], why: str, results: Results, log: Log) -> None:
    for case in cases:
        if case not in results.not_measured:
            results.skip(case, why)
            log(f"{case}: not measured: {why}")


def _mesh_cases(
    stack: contextlib.ExitStack, cases: list[str], results: Results, tmp: Path, upstream_url: str, redis_url: str,
    log: Log, certs: BenchPKI | None = None,
) -> list[Case]:  # fmt: skip
    """One mesh (plaintext, or TLS with `certs`) and the wanted cases it serves; a mesh that fails to start costs
    its own cases' figures, not the run."""
    try:
        bench = BenchMesh(tmp, upstream_url, redis_url, certs)
        stack.callback(bench.stop)
        pop: connector.Population | None = None
        if any(c.startswith("connector_") for c in cases):
            try:
                pop = connector.Population.prepare(tmp / "population", quick=results.quick, log=log)
                bench.add_population(pop.url)
                stack.callback(pop.stop)
                pop.start(bench.national.key, tmp / "logs")
            except (connector.Unavailable, RuntimeError) as exc:
                _skip([c for c in cases if c.startswith("connector_")], str(exc), results, log)
                pop = None
        bench.publish_and_start_registry()
        started = _gateway_cases(bench, cases, results, log)
        if pop is not None:
            started += _connector_cases(bench, pop, cases)
        return started
    except Exception as exc:  # a part that fails to start must cost its figures, not the whole run
        what = "the mesh" if certs is None else "the TLS mesh"
        _skip(cases, f"{what} did not start: {type(exc).__name__}: {str(exc)[:1500]}", results, log)
        return []


def _start_or_skip(bench: BenchMesh, gw: Any, policies: str, results: Results, skip: list[str], log: Log) -> bool:
    try:
        bench.start_gateway(gw, policies)
        return True
    except RuntimeError as exc:
        why = f"gateway {gw.code} with --policies {policies} did not start: {str(exc)[-1200:]}"
        _skip(skip, why, results, log)
        return False


def _gateway_cases(bench: BenchMesh, cases: list[str], results: Results, log: Log) -> list[Case]:
    one, two = ("gateway_full_1hop", "gateway_full_2hop") if bench.certs is None else TLS_CASES
    out: list[Case] = []
    record = f"/record/{SUBJECT}"
    local = bench.headers(LOCAL_CONSUMER, "national")
    if "gateway_bare" in cases and _start_or_skip(bench, bench.bare, "none", results, ["gateway_bare"], log):
        out.append(Case("gateway_bare", bench.url(bench.bare, BENCH_SERVICE, record), cpu_pids=bench.pid(bench.bare),
                        refresh_headers=local))
    full = [c for c in cases if c != "gateway_bare"]
    if not full or not _start_or_skip(bench, bench.national, FULL_POLICIES, results, full, log):
        return out
    if one in cases:
        out.append(Case(one, bench.url(bench.national, BENCH_SERVICE, record), cpu_pids=bench.pid(bench.national),
                        refresh_headers=local, tls=bench.client_tls(LOCAL_CONSUMER)))
    nghean = [c for c in cases if c in (two, "connector_2hop")]
    if nghean and _start_or_skip(bench, bench.nghean, FULL_POLICIES, results, nghean, log) and two in cases:
        out.append(Case(two, bench.url(bench.nghean, BENCH_SERVICE, record),
                        cpu_pids=bench.pid(bench.nghean) + bench.pid(bench.national),
                        refresh_headers=bench.headers(PROVINCE_CONSUMER, "nghean"),
                        tls=bench.client_tls(PROVINCE_CONSUMER)))
    return out


def _connector_cases(bench: BenchMesh, pop: connector.Population, cases: list[str]) -> list[Case]:
    out: list[Case] = []
    if "connector_direct" in cases:
        out.append(pop.direct_case(bench.national.key))
    if "connector_2hop" in cases and bench.nghean.proc is not None and bench.national.proc is not None:
        out.append(Case("connector_2hop", bench.url(bench.nghean, connector.SERVICE, f"/persons/{pop.person_id}"),
                        refresh_headers=bench.headers(PROVINCE_CONSUMER, "nghean"),
                        cpu_pids=bench.pid(bench.nghean) + bench.pid(bench.national) + pop.pids()))
    return out
