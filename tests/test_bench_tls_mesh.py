"""The bench's TLS mesh (bench/mesh.py with the bench CA): both TLS cases answer 200 over HTTPS, through the
gateways' TLS fronts, the mesh hop's mutual TLS and the upstream's HTTPS port, for the load generator as the bench
runs it; plaintext on those ports is refused. Real processes: nginx, the stand-in registry, gateways, Redis."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bench import measure, mesh, nginx
from bench.results import Results
from bench.tls import BenchPKI
from lienthong.cli.supervisor import Supervisor
from lienthong.redis_connection import free_port

pytestmark = pytest.mark.skipif(nginx.executable() is None, reason="nginx is not installed (make bench installs it)")


@pytest.fixture(scope="module")
def tls_cases(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[list[measure.Case], Results]]:
    tmp: Path = tmp_path_factory.mktemp("bench-tls")
    certs = BenchPKI(tmp / "pki")
    sup = Supervisor(tmp / "logs", echo=False)
    up_port, tls_port = free_port(), free_port()
    results = Results({"cores": 2, "cpu_model": "test cpu"}, quick=True)
    try:
        conf = nginx.upstream_conf(tmp / "up", up_port, (tls_port, certs.upstream()))
        nginx.start(sup, "upstream", tmp / "up", conf, up_port)
        tls = (certs, f"https://127.0.0.1:{tls_port}")
        with mesh.cases_started(list(mesh.TLS_CASES), results, tmp, "http://127.0.0.1:9", print, tls) as cases:
            yield cases, results
    finally:
        sup.stop_all()


def test_both_tls_cases_start(tls_cases: tuple[list[measure.Case], Results]) -> None:
    cases, results = tls_cases
    assert [c.name for c in cases] == list(mesh.TLS_CASES), results.not_measured
    assert all(c.url.startswith("https://") and c.tls is not None for c in cases)


def test_the_load_generator_is_answered_over_tls(tls_cases: tuple[list[measure.Case], Results]) -> None:
    cases, _ = tls_cases
    for case in cases:
        headers = case.phase_headers()
        measure.preflight(case, headers)  # 200, or NotMeasured with the answer
        low = measure.python_load(case.url, headers=headers, duration=0.5, rate=20, tls=case.tls)
        assert low.errors == 0 and low.statuses == {"200": low.requests} and low.requests == 10, case.name


def test_plaintext_on_the_tls_fronts_is_refused(tls_cases: tuple[list[measure.Case], Results]) -> None:
    cases, _ = tls_cases
    for case in cases:
        r = httpx.get(case.url.replace("https://", "http://", 1), headers=case.phase_headers(), timeout=10)
        assert r.status_code == 400 and "https://" in r.text, case.name
