"""The gateway's outgoing TLS (gateway.upstream): the mesh hop and the connector call as the gateway makes them.

The UpstreamClient runs here in a uvloop, as in a gateway worker; the server at the other end is a real process
(tests.upstream_tls_support, a TLS 1.3 server requiring a client certificate and counting its connections), with
certificates issued by a test CA. Covered:
- the gateway presents its own certificate (the server reads urn:lienthong:gateway:<code>);
- many calls travel over one kept-alive connection: one handshake, whatever the number of calls;
- a new connection to the same peer resumes the last TLS session (server and client both see it resumed);
- a server certificate for another identity, or a revoked one, is refused with 502 certificate-identity-mismatch /
  certificate-revoked, on a new connection, on a resumed session and on a pooled connection alike (the pool is keyed
  by the identity expected, and a revocation closes the pooled connections to that certificate);
- a server certificate from an unknown CA, or expired, fails the handshake: 502 upstream-failed naming TLS.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest
import uvloop

from gateway.breaker import Breakers
from gateway.upstream import UpstreamClient, client_tls
from lienthong import pki
from lienthong.problem import Problem
from lienthong.redis_connection import free_port
from tests.procs import Proc
from tests.upstream_tls_support import IssuingCA

HOSTING = pki.identity("gateway", "hanoi")
HOME = pki.identity("gateway", "national")


def run(coro: Any) -> Any:
    async def bounded() -> Any:
        return await asyncio.wait_for(coro, 60)  # only a hang guard

    return uvloop.run(bounded())


def wait_port(port: int, proc: Proc) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.process is not None and proc.process.poll() is not None:
            raise RuntimeError(f"{proc.name} exited:\n{proc.log_tail()}")
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{proc.name} never listened on {port}:\n{proc.log_tail()}")


@contextmanager
def counting_server(files: pki.CertFiles, log_dir: Path) -> Iterator[str]:
    port = free_port()
    argv = [sys.executable, "-m", "tests.upstream_tls_support", "count", "--tls-dir", str(files.directory),
            "--port", str(port)]  # fmt: skip
    proc = Proc(f"count-{port}", argv, log_dir).start()
    try:
        wait_port(port, proc)
        yield f"https://127.0.0.1:{port}"
    finally:
        proc.stop()


@pytest.fixture
def ca(tmp_path: Path) -> IssuingCA:
    return IssuingCA.make(tmp_path / "pki")


@pytest.fixture
def client(ca: IssuingCA) -> UpstreamClient:
    """The home gateway's upstream client, with its certificate as gateway.app builds it."""
    tls = client_tls(ca.issue("national", HOME))
    assert tls is not None
    return UpstreamClient(Breakers(1000, 5.0), tls=tls)


@pytest.fixture
def hosting(ca: IssuingCA, tmp_path: Path) -> Iterator[tuple[str, pki.CertFiles]]:
    """The hosting gateway hanoi (its certificate directory), as a TLS server process."""
    files = ca.issue("hanoi", HOSTING)
    with counting_server(files, tmp_path) as base:
        yield base, files


async def call(client: UpstreamClient, base: str, peer: str, revoked: frozenset[int] = frozenset()) -> dict[str, Any]:
    response = await client.call(
        method="GET", base=base, target="/r1/x", headers={}, body=b"", timeout_ms=10_000, what="hosting gateway hanoi",
        peer=peer, revoked=revoked,
    )  # fmt: skip
    assert response.status == 200, response
    doc: dict[str, Any] = orjson.loads(response.body)
    return doc


async def refused(client: UpstreamClient, base: str, peer: str, revoked: frozenset[int] = frozenset()) -> Problem:
    with pytest.raises(Problem) as caught:
        await call(client, base, peer, revoked)
    return caught.value


def test_the_gateway_presents_its_certificate_and_keeps_one_connection(
    client: UpstreamClient, hosting: tuple[str, pki.CertFiles]
) -> None:
    base, _ = hosting

    async def scenario() -> list[dict[str, Any]]:
        try:
            return [await call(client, base, HOSTING) for _ in range(200)]
        finally:
            await client.close()

    seen = run(scenario())
    assert {d["client"] for d in seen} == {HOME}
    assert {d["connection"] for d in seen} == {1}, "every call after the first reuses the kept-alive connection"
    assert seen[-1]["requests"] == 200
    assert client.handshakes == 1


def test_a_new_connection_resumes_the_tls_session(client: UpstreamClient, hosting: tuple[str, pki.CertFiles]) -> None:
    base, _ = hosting

    async def scenario() -> list[dict[str, Any]]:
        seen = []
        for _ in range(3):
            seen.append(await call(client, base, HOSTING))
            await client.close()  # drops the idle connections; the next call needs a new one
        return seen

    first, second, third = run(scenario())
    assert [first["connection"], second["connection"], third["connection"]] == [1, 2, 3]
    assert not first["resumed"] and second["resumed"] and third["resumed"]
    assert (client.handshakes, client.resumed) == (3, 2)
    assert second["client"] == HOME  # a resumed session still carries the gateway's certificate


def test_a_server_certificate_for_another_identity_is_refused(
    client: UpstreamClient, hosting: tuple[str, pki.CertFiles]
) -> None:
    base, _ = hosting
    others = [pki.identity("gateway", "haiphong"), pki.identity("subsystem", "VN/GOV/BCA/population"),
              pki.identity("registry", "VN")]  # fmt: skip

    async def scenario() -> list[Problem]:
        try:
            await call(client, base, HOSTING)  # a checked connection (and a session) for hanoi now exists
            return [await refused(client, base, other) for other in others]
        finally:
            await client.close()

    for problem, other in zip(run(scenario()), others, strict=True):
        assert (problem.status, problem.code) == (502, "certificate-identity-mismatch")
        assert HOSTING in problem.detail and other in problem.detail


def test_a_revoked_server_certificate_is_refused_on_new_resumed_and_pooled_connections(
    ca: IssuingCA, client: UpstreamClient, hosting: tuple[str, pki.CertFiles]
) -> None:
    base, files = hosting
    revoked = frozenset({ca.serial(files), 12345})

    async def scenario() -> tuple[Problem, Problem, Problem]:
        try:
            fresh = await refused(client, base, HOSTING, revoked)  # a new connection, full handshake
            await call(client, base, HOSTING)  # pooled now, and its session kept
            pooled = await refused(client, base, HOSTING, revoked)  # the pooled connection is not used
            await call(client, base, HOSTING)
            await client.close()
            resumed = await refused(client, base, HOSTING, revoked)  # a resumed session carries the same cert
            return fresh, pooled, resumed
        finally:
            await client.close()

    for problem in run(scenario()):
        assert (problem.status, problem.code) == (502, "certificate-revoked")
    assert client.resumed >= 1


@pytest.mark.parametrize("case", ["unknown-ca", "expired", "not-yet-valid"])
def test_a_server_certificate_the_mesh_ca_does_not_vouch_for_fails_the_handshake(
    case: str, ca: IssuingCA, client: UpstreamClient, tmp_path: Path
) -> None:
    now = dt.datetime.now(dt.UTC)
    if case == "unknown-ca":
        stranger = IssuingCA.make(tmp_path / "stranger", "another CA")
        files = stranger.issue("hanoi", HOSTING, trust=ca.cert_path)  # it trusts our CA, we do not trust it
    elif case == "expired":
        files = ca.issue("hanoi", HOSTING, lifetime=dt.timedelta(days=1), now=now - dt.timedelta(days=2))
    else:
        files = ca.issue("hanoi", HOSTING, now=now + dt.timedelta(days=1))

    async def scenario(base: str) -> Problem:
        try:
            return await refused(client, base, HOSTING)
        finally:
            await client.close()

    with counting_server(files, tmp_path) as base:
        problem = run(scenario(base))
        assert (problem.status, problem.code) == (502, "upstream-failed")
        assert "TLS handshake" in problem.detail and "certificate" in problem.detail, problem.detail
        assert client.handshakes == 0
