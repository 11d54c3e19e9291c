"""The generated nginx configs: the upstream answers the fixed JSON record, the proxy passes it through; with TLS
(the baseline of the bench's TLS cases) on both legs: TLS 1.3 only, the proxy's certificate presented upstream over a
kept-alive connection, the upstream's name checked, a client certificate of another CA refused."""

from __future__ import annotations

import json
import os
import ssl
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from bench import cpu, nginx
from bench.tls import NGINX_PROXY, UPSTREAM_NAME, BenchPKI
from lienthong.cli.supervisor import Supervisor
from lienthong.pki import CertFiles
from lienthong.redis_connection import free_port
from tests.procs import Proc

pytestmark = pytest.mark.skipif(nginx.executable() is None, reason="nginx is not installed (make bench installs it)")


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, Supervisor]]:
    tmp = tmp_path_factory.mktemp("nginx")
    sup = Supervisor(tmp / "logs", echo=False)
    up_port, proxy_port = free_port(), free_port()
    try:
        nginx.start(sup, "upstream", tmp / "up", nginx.upstream_conf(tmp / "up", up_port), up_port)
        nginx.start(sup, "proxy", tmp / "proxy", nginx.proxy_conf(tmp / "proxy", proxy_port, up_port), proxy_port)
        yield f"http://127.0.0.1:{up_port}", f"http://127.0.0.1:{proxy_port}", sup
    finally:
        sup.stop_all()


def test_upstream_answers_the_fixed_record(servers: tuple[str, str, Supervisor]) -> None:
    upstream, _proxy, _sup = servers
    r = httpx.get(f"{upstream}/r1/anything/at/all")
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    assert r.json() == json.loads(nginx.RECORD)


def test_proxy_passes_the_record_through(servers: tuple[str, str, Supervisor]) -> None:
    _upstream, proxy, _sup = servers
    with httpx.Client() as client:
        for _ in range(3):  # several calls on one keep-alive connection
            r = client.get(f"{proxy}/record")
            assert r.status_code == 200
            assert r.json()["id"] == "001203004567"


def test_cpu_tree_holds_master_and_worker(servers: tuple[str, str, Supervisor]) -> None:
    _upstream, _proxy, sup = servers
    pids = [c.process.pid for c in sup.components if c.process is not None]
    assert len(cpu.tree_pids(pids[1])) >= 2  # the taskset/nginx master and its worker
    assert cpu.tree_cpu_seconds(pids) >= 0.0


def test_cpu_seconds_count_work_done() -> None:
    before = cpu.tree_cpu_seconds([os.getpid()])
    deadline = time.process_time() + 0.2
    while time.process_time() < deadline:
        pass
    assert cpu.tree_cpu_seconds([os.getpid()]) - before >= 0.15


def test_no_file_outside_the_prefix_is_written(tmp_path: Path) -> None:
    conf = nginx.upstream_conf(tmp_path, 1234)
    for line in conf.splitlines():
        if line.strip().startswith(("pid", "error_log", "client_body_temp_path", "proxy_temp_path")):
            assert str(tmp_path) in line
    assert "access_log off;" in conf and "daemon off;" in conf and "worker_processes 1;" in conf


# -- TLS on both legs (the baseline of the gateway's TLS cases) ---------------------------------------------------


@dataclass
class TLSServers:
    upstream: str  # the upstream's HTTPS port
    proxy: str  # nginx_tls: TLS on both legs
    counting_proxy: str  # the same config in front of a server that reports its TLS peer and connection
    certs: BenchPKI
    tmp: Path


@pytest.fixture(scope="module")
def tls_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TLSServers]:
    tmp = tmp_path_factory.mktemp("nginx-tls")
    certs = BenchPKI(tmp / "pki")
    sup = Supervisor(tmp / "logs", echo=False)
    up_port, tls_port, proxy_port, counting_port, counted_port = (free_port() for _ in range(5))
    probe = certs.context(certs.client("VN/GOV/BTP/justice"))
    tls = nginx.ProxyTLS(certs.nginx_proxy(), UPSTREAM_NAME)
    counter = Proc("counting-upstream", [sys.executable, "-m", "tests.upstream_tls_support", "count", "--tls-dir",
                                         str(certs.upstream().directory), "--port", str(counted_port)], tmp / "logs",
                   env={"PYTHONPATH": str(Path(__file__).resolve().parent.parent)})  # fmt: skip
    try:
        nginx.start(sup, "upstream", tmp / "up", nginx.upstream_conf(tmp / "up", up_port, (tls_port, certs.upstream())),
                    up_port)  # fmt: skip
        nginx.start(sup, "proxy", tmp / "proxy", nginx.proxy_conf(tmp / "proxy", proxy_port, tls_port, tls),
                    proxy_port, tls=probe)  # fmt: skip
        counter.start()
        nginx.start(sup, "counting", tmp / "counting",
                    nginx.proxy_conf(tmp / "counting", counting_port, counted_port, tls), counting_port, tls=probe)
        yield TLSServers(f"https://127.0.0.1:{tls_port}", f"https://127.0.0.1:{proxy_port}",
                         f"https://127.0.0.1:{counting_port}", certs, tmp)  # fmt: skip
    finally:
        counter.stop()
        sup.stop_all()


def test_tls_upstream_answers_with_or_without_a_client_certificate(tls_servers: TLSServers) -> None:
    certs = tls_servers.certs
    for context in (certs.context(), certs.context(certs.client("VN/GOV/BTP/justice"))):
        r = httpx.get(f"{tls_servers.upstream}/record", verify=context)
        assert r.status_code == 200 and r.json() == json.loads(nginx.RECORD)


def test_tls_proxy_passes_the_record_through_on_one_connection(tls_servers: TLSServers) -> None:
    with httpx.Client(verify=tls_servers.certs.context()) as client:
        for _ in range(3):
            r = client.get(f"{tls_servers.proxy}/record")
            assert r.status_code == 200 and r.json()["id"] == "001203004567"


def test_tls_proxy_presents_its_certificate_and_keeps_the_upstream_connection(tls_servers: TLSServers) -> None:
    with httpx.Client(verify=tls_servers.certs.context()) as client:
        seen = [client.get(f"{tls_servers.counting_proxy}/x").json() for _ in range(4)]
    assert {s["client"] for s in seen} == {NGINX_PROXY}
    assert len({s["connection"] for s in seen}) == 1  # kept alive: one TLS connection to the upstream


def test_tls_front_speaks_only_tls_1_3(tls_servers: TLSServers) -> None:
    context = tls_servers.certs.context()
    context.minimum_version = context.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{tls_servers.proxy}/record", verify=context)


def test_tls_front_refuses_a_client_certificate_of_another_ca(tls_servers: TLSServers) -> None:
    other = BenchPKI(tls_servers.tmp / "other-ca")
    context = tls_servers.certs.context(other.client("VN/GOV/BTP/justice"))  # trusts the server, not its CA
    r = httpx.get(f"{tls_servers.proxy}/record", verify=context)
    assert r.status_code == 400  # nginx: "The SSL certificate error"


def test_tls_proxy_refuses_an_upstream_without_the_expected_name(tls_servers: TLSServers) -> None:
    tmp, certs = tls_servers.tmp, tls_servers.certs
    port = free_port()
    wrong = nginx.ProxyTLS(certs.nginx_proxy(), "other.bench.lienthong")
    sup = Supervisor(tmp / "logs-wrong", echo=False)
    try:
        with pytest.raises(RuntimeError, match="502"):
            nginx.start(sup, "wrong", tmp / "wrong", nginx.proxy_conf(tmp / "wrong", port, int(
                tls_servers.upstream.rsplit(":", 1)[1]), wrong), port, tls=certs.context())  # fmt: skip
    finally:
        sup.stop_all()
    assert 'does not match "other.bench.lienthong"' in (tmp / "wrong" / "error.log").read_text()


def test_tls_config_rendering() -> None:
    files = CertFiles(Path("/certs"))
    conf = nginx.proxy_conf(Path("/tmp/p"), 8443, 9443, nginx.ProxyTLS(files, UPSTREAM_NAME))
    for line in ("listen 127.0.0.1:8443 ssl;", "ssl_protocols TLSv1.3;", "ssl_verify_client optional;",
                 "proxy_pass https://backend;", "proxy_ssl_protocols TLSv1.3;", "proxy_ssl_certificate /certs/tls.crt;",
                 "proxy_ssl_certificate_key /certs/tls.key;", "proxy_ssl_trusted_certificate /certs/ca.crt;",
                 "proxy_ssl_verify on;", f"proxy_ssl_name {UPSTREAM_NAME};", "proxy_ssl_session_reuse on;",
                 "keepalive 64;", 'proxy_set_header Connection "";'):  # fmt: skip
        assert line in conf, line
    plain = nginx.proxy_conf(Path("/tmp/p"), 8080, 9080)
    assert "ssl" not in plain and "proxy_pass http://backend;" in plain
    assert "ssl" not in nginx.upstream_conf(Path("/tmp/u"), 9080)
    both = nginx.upstream_conf(Path("/tmp/u"), 9080, (9443, files))
    assert "listen 127.0.0.1:9080;" in both and "listen 127.0.0.1:9443 ssl;" in both
