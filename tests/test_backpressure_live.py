"""Back-pressure on a live gateway (issue 13, finding 6): a client that pipelines thousands of /r1 calls and reads
none of the answers must not make the gateway hold them all in memory.

A real `lienthong gateway serve` process (one forked worker) answers the getOpenAPI metaservice with a document of
about 16 KiB. One raw socket sends 4,000 such calls at once and reads nothing for a few seconds, while the test
samples the worker's resident memory (VmRSS in /proc); the review measured about 40 MB of growth in 1.5 s. Then the
test reads every answer and checks that each arrived, in order.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from tests.mesh_support import Mesh, call_headers
from tests.test_http_server import Raw

CLIENT = "VN/GOV/BHXH/insurance"
SUBSYSTEM = "VN/GOV/BCA/population"
CALLS = 4000
MISSING_EVERY = 10  # every tenth call asks for a service that does not exist: its 404 names it, so order shows
BOUND_KB = 15 * 1024


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    root = tmp_path_factory.mktemp("backpressure-mesh")
    # plain HTTP on purpose: this measures the HTTP layer's buffering with one raw socket written from a thread while
    # read from another, which an SSL socket does not allow (the mesh's TLS is tested in test_mesh_wire)
    m = Mesh(root, root / "logs", policies="authn,authz", registry="standin", tls=False)
    m.add_gateway("national")
    try:
        m.start_registry()
        for member in ("VN/GOV/BCA", "VN/GOV/BHXH"):
            m.add_member(member, "national")
        for sub in (SUBSYSTEM, CLIENT):
            m.add_subsystem(sub)
        m.add_client(CLIENT)
        # 60 endpoints with long paths: getOpenAPI answers about 16 KiB
        endpoints = [("GET", f"/registers/{i}/{'entries-of-the-register-' * 4}/{{id}}") for i in range(60)]
        m.add_service(f"{SUBSYSTEM}/registers", "national", "http://127.0.0.1:9", endpoints)
        m.publish()
        m.start_gateway("national", {"--workers": "1"})
        yield m
    finally:
        m.stop()


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def _workers(pid: int) -> list[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    assert children, "the gateway has no worker process"
    return [int(c) for c in children]


def _request(mesh: Mesh, i: int) -> bytes:
    code = f"missing{i}" if i % MISSING_EVERY == MISSING_EVERY - 1 else "registers"
    head = f"GET /r1/{SUBSYSTEM}/getOpenAPI?serviceCode={code} HTTP/1.1\r\nHost: gw\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in call_headers(mesh, CLIENT, "national").items())
    return (head + "\r\n").encode()


def _read_in_order(conn: Raw, mesh: Mesh, count: int) -> None:
    for i in range(count):
        response = conn.read_response()
        if i % MISSING_EVERY == MISSING_EVERY - 1:
            assert response.status == 404, (i, response.body[:200])
            assert f"no service missing{i} " in orjson.loads(response.body)["detail"]
        else:
            assert response.status == 200, (i, response.body[:200])
            assert len(response.body) > 12_000


def test_unread_pipelined_answers_do_not_pile_up_in_memory(mesh: Mesh) -> None:
    gateway = mesh.gateways["national"]
    assert gateway.proc is not None and gateway.proc.process is not None
    workers = _workers(gateway.proc.process.pid)
    warm = Raw(gateway.port, timeout=60)  # the first calls fill caches and pools: not what is measured
    warm.send(b"".join(_request(mesh, i) for i in range(300)))
    _read_in_order(warm, mesh, 300)
    warm.close()
    before = sum(_rss_kb(pid) for pid in workers)

    conn = Raw(gateway.port, timeout=60)
    conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)  # the kernel's share: small and fixed
    data = b"".join(_request(mesh, i) for i in range(CALLS))
    sender = threading.Thread(target=conn.sock.sendall, args=(data,), daemon=True)
    sender.start()  # blocks once the gateway stops reading, until the answers are read below
    peak = before
    started = time.monotonic()
    while time.monotonic() - started < 4.0:  # reading nothing; the old code grew by tens of MB within 1.5 s
        peak = max(peak, sum(_rss_kb(pid) for pid in workers))
        time.sleep(0.05)
    assert peak - before < BOUND_KB, f"the worker grew by {(peak - before) // 1024} MB for one unread connection"

    _read_in_order(conn, mesh, CALLS)
    sender.join(60)
    assert not sender.is_alive()
    conn.close()
