"""`make bench` / `make bench-quick`: measure nginx, the gateways and a connector side by side, then the scale cases.

    python -m bench.run [--quick] [--only CASES] [--duration S] [--results-dir DIR]

CASES is a comma list of groups (`nginx`, `floor`, `gateway`, `connector`, `tls`, `scale`) or single names
(`nginx_proxy`, `gateway_full_2hop`, `full_tls`, `snapshot`, `revocation`, ...). Every case ends measured or listed as
"not measured: <why>". The `tls` group is the same comparison with TLS 1.3 on every leg (bench/tls.py issues the
certificates): nginx's upstream over HTTPS, nginx proxying with TLS on both legs, and the gateways' full chain over
one and two hops; all of them run beside the plaintext cases, in the same interleaved rounds.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console

from bench import install, machine, mesh, nginx, scale, wrk
from bench.measure import Case, Plan, run_rounds
from bench.results import CASES, RESULTS_DIR, Results, print_table
from bench.tls import UPSTREAM_NAME, BenchPKI
from lienthong import pki
from lienthong.cli.supervisor import Component, StartFailed, Supervisor
from lienthong.redis_connection import free_port

GROUPS: dict[str, tuple[str, ...]] = {
    "nginx": ("nginx_upstream", "nginx_proxy"),
    "floor": ("floor_own", "floor_granian"),
    "gateway": ("gateway_bare", "gateway_full_1hop", "gateway_full_2hop"),
    "connector": ("connector_direct", "connector_2hop"),
    "tls": ("nginx_upstream_tls", "nginx_tls", *mesh.TLS_CASES),
    "scale": scale.CASES,
}


def selected(only: str | None) -> set[str]:
    if not only:
        return {name for names in GROUPS.values() for name in names}
    out: set[str] = set()
    for item in (x.strip() for x in only.split(",") if x.strip()):
        if item in GROUPS:
            out.update(GROUPS[item])
        elif item in CASES or item in scale.CASES:
            out.add(item)
        else:
            known = sorted({*GROUPS, *CASES, *scale.CASES})
            raise SystemExit(f"--only: unknown case {item!r}; use one of {', '.join(known)}")
    return out


def plan_for(args: argparse.Namespace) -> Plan:
    plan = Plan(duration=2.0, warmup=0.5, rounds=1, low_duration=1.0) if args.quick else Plan()
    if args.duration:
        plan.duration = args.duration
    if args.rounds:
        plan.rounds = args.rounds
    plan.use_wrk = not args.python_loadgen
    return plan


def run(args: argparse.Namespace) -> dict[str, object]:
    console = Console(width=max(Console().width, 132))

    def log(line: str) -> None:
        console.print(f"[dim]{time.strftime('%H:%M:%S')}[/] {line}", highlight=False)

    cases = selected(args.only)
    plan = plan_for(args)
    results = Results(machine.describe(), quick=args.quick, rounds=plan.rounds)
    install.ensure_tools(results.notes)
    for name in (*CASES, *scale.CASES):
        if name not in cases:
            results.skip(name, "not selected (--only)")
    results.notes.append(
        f"load generator: {'wrk' if plan.use_wrk and wrk.available() else 'python (bench.loadgen)'} at concurrency "
        f"32, {plan.rounds} interleaved round(s) of {plan.duration:g} s per case, each after {plan.warmup:g} s "
        f"warm-up; figures are medians over the rounds; low-rate latency by bench.loadgen at "
        f"{plan.low_rate:g} req/s for {plan.low_duration:g} s, counted from each request's scheduled start"
    )
    pins = machine.server_prefix(), machine.loadgen_prefix()
    results.notes.append(
        f"pinning: servers `{' '.join(pins[0]) or 'unpinned'}`, load generator `{' '.join(pins[1]) or 'unpinned'}`"
    )
    with tempfile.TemporaryDirectory(prefix="lienthong-bench-") as tmp_name:
        tmp = Path(tmp_name)
        sup = Supervisor(tmp / "logs", echo=False)
        try:
            throughput(cases, plan, results, sup, tmp, log)
        finally:
            sup.stop_all()
        scale.run_all(cases, results, quick=args.quick, log=log, workdir=tmp)
    data = results.write(Path(args.results_dir))
    print_table(data, console)
    console.print(f"wrote {Path(args.results_dir) / 'latest.json'} and latest.md")
    return data


def throughput(cases: set[str], plan: Plan, results: Results, sup: Supervisor, tmp: Path, log: mesh.Log) -> None:
    """Start every wanted case's processes, then measure them all in interleaved rounds."""
    wanted = [c for c in CASES if c in cases]
    if not wanted:
        return
    if nginx.executable() is None:
        for case in wanted:
            results.skip(case, "nginx is not installed and could not be installed (the upstream of every case)")
        return
    tls_cases = [c for c in wanted if c in GROUPS["tls"]]
    certs = bench_pki(tmp, tls_cases, results)
    up_port, tls_port = free_port(), free_port()
    prefix = tmp / "nginx-upstream"
    try:
        try:
            conf = nginx.upstream_conf(prefix, up_port, (tls_port, certs.upstream()) if certs else None)
            upstream = nginx.start(sup, "nginx-upstream", prefix, conf, up_port)
        except (StartFailed, RuntimeError, OSError) as exc:
            if certs is None:
                raise
            # an nginx without TLS costs the TLS cases only: the plaintext ones run as before
            for case in tls_cases:
                results.skip(case, f"the nginx upstream did not start with its HTTPS port: {exc}")
            certs = None
            upstream = nginx.start(sup, "nginx-upstream-plain", prefix, nginx.upstream_conf(prefix, up_port), up_port)
    except (StartFailed, RuntimeError, OSError) as exc:
        for case in wanted:
            if case not in results.not_measured:
                results.skip(case, f"the nginx upstream did not start: {exc}")
        return
    upstream_url = f"http://127.0.0.1:{up_port}"
    assert upstream.process is not None
    started: list[Case] = []
    if "nginx_upstream" in cases:
        started.append(Case("nginx_upstream", f"{upstream_url}/record", cpu_pids=[upstream.process.pid]))
    if "nginx_proxy" in cases:
        started += nginx_proxy("nginx_proxy", sup, tmp, up_port, results)
    if certs is not None:
        client = certs.client(mesh.LOCAL_CONSUMER)  # what the load generator presents, as in case full_tls
        if "nginx_upstream_tls" in cases:
            started.append(Case("nginx_upstream_tls", f"https://127.0.0.1:{tls_port}/record",
                                cpu_pids=[upstream.process.pid], tls=client))
        if "nginx_tls" in cases:
            started += nginx_proxy("nginx_tls", sup, tmp, tls_port, results, certs, client)
    for kind in ("own", "granian"):
        if f"floor_{kind}" in cases:
            started += floor(kind, sup, upstream_url, results)
    mesh_cases = [c for c in wanted if c.startswith(("gateway_", "connector_")) or c in mesh.TLS_CASES]
    tls = (certs, f"https://127.0.0.1:{tls_port}") if certs is not None else None
    with mesh.cases_started(mesh_cases, results, tmp, upstream_url, log, tls) as mesh_started:
        run_rounds(results, started + mesh_started, plan, log)


def bench_pki(tmp: Path, tls_cases: list[str], results: Results) -> BenchPKI | None:
    """The bench CA and its certificates when a TLS case is wanted; else (or when it cannot be made) None."""
    if not tls_cases:
        return None
    try:
        certs = BenchPKI(tmp / "pki")
    except (ImportError, OSError, ValueError) as exc:
        for case in tls_cases:
            results.skip(case, f"no bench CA: {type(exc).__name__}: {exc}")
        return None
    results.notes.append(
        "TLS cases: TLS 1.3 on every leg, certificates from a bench CA (bench/tls.py); under load wrk sends no client "
        "certificate (it cannot), so the client authenticates by its token as in the plaintext cases; the low-rate "
        "generator also presents the consumer's subsystem certificate"
    )
    return certs


def nginx_proxy(
    name: str, sup: Supervisor, tmp: Path, upstream_port: int, results: Results, certs: BenchPKI | None = None,
    client: pki.CertFiles | None = None,
) -> list[Case]:  # fmt: skip
    """Case 2 (plain HTTP) or, with `certs`, nginx_tls: nginx proxying to the upstream with TLS on both legs."""
    port, prefix = free_port(), tmp / name
    tls = None if certs is None else nginx.ProxyTLS(certs.nginx_proxy(), UPSTREAM_NAME)
    try:
        proxy = nginx.start(sup, name, prefix, nginx.proxy_conf(prefix, port, upstream_port, tls), port,
                            tls=None if certs is None else certs.context(client))  # fmt: skip
    except (StartFailed, RuntimeError, OSError) as exc:
        results.skip(name, f"the nginx proxy did not start: {exc}")
        return []
    assert proxy.process is not None
    scheme = "http" if certs is None else "https"
    return [Case(name, f"{scheme}://127.0.0.1:{port}/record", cpu_pids=[proxy.process.pid], tls=client)]


def floor(kind: str, sup: Supervisor, upstream_url: str, results: Results) -> list[Case]:
    """Cases 2a/2b (bench/proxy_floor.py): a forwarding-only proxy on the server core."""
    name, port = f"floor_{kind}", free_port()
    argv = [*machine.server_prefix(), sys.executable, "-m", "bench.proxy_floor", kind, "--port", str(port),
            "--upstream", upstream_url]
    try:
        proc = sup.start(Component(name, argv, health_url=f"http://127.0.0.1:{port}/healthz"), timeout=30)
    except StartFailed as exc:
        results.skip(name, f"it did not start: {exc}")
        return []
    assert proc.process is not None
    return [Case(name, f"http://127.0.0.1:{port}/r1/record/1", cpu_pids=[proc.process.pid])]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="about a minute, for development")
    parser.add_argument("--only", help="comma list of cases or groups (nginx, floor, gateway, connector, tls, scale)")
    parser.add_argument("--duration", type=float, help="seconds of load per case and round (default 3, quick 2)")
    parser.add_argument("--rounds", type=int, help="interleaved rounds of every load case (default 5, quick 1)")
    parser.add_argument("--python-loadgen", action="store_true", help="use bench.loadgen even when wrk is installed")
    parser.add_argument("--results-dir", default=str(RESULTS_DIR))
    run(parser.parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
