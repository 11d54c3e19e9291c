"""The generated nginx configs: the upstream answers the fixed JSON record, the proxy passes it through."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bench import cpu, nginx
from lienthong.redis_connection import free_port
from lienthong.supervisor import Supervisor

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
