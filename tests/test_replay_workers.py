"""A gateway assertion is accepted once per gateway, not once per worker (issue 13: replay across workers).

A live hosting gateway with `--workers 2` (the kernel hands each new connection to either worker) and the same
assertion, signed as the issuing gateway and sent over the hop's mutual TLS as that gateway, on many fresh
connections: exactly one call is accepted, every other one is 401 invalid-assertion naming the replay. A fresh
assertion afterwards is accepted again (the shared set refuses replays, not calls). The mesh hop always gets
problem+json at lienthong's precise status; X-Road-Error is the X-Road type (PR-REST 1.0.4 §4.3).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from lienthong import tokens
from tests.mesh_support import Mesh

SERVICE = "VN/GOV/BCA/population/echo"
CLIENT = "VN/PROV/HANOI/portal"  # homed at hanoi, which signs the assertion
CONNECTIONS = 24  # fresh connections: with two workers accepting, both get some (each 1/2, all to one: 2^-23)
REFUSED = "Server.ServerProxy.AuthenticationFailed"  # invalid-assertion's X-Road type


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    root = tmp_path_factory.mktemp("replay-workers")
    m = Mesh(root, root / "logs", registry="standin", workers=2)
    for code in ("national", "hanoi"):
        m.add_gateway(code)
    try:
        m.start_registry()
        for member, home in (("VN/GOV/BCA", "national"), ("VN/PROV/HANOI", "hanoi")):
            m.add_member(member, home)
        for sub in ("VN/GOV/BCA/population", CLIENT):
            m.add_subsystem(sub)
        m.add_client(CLIENT)
        m.add_service(SERVICE, "national", m.start_upstream("echo"), [("GET", "/items/{id}")])
        m.add_grant("g", CLIENT, SERVICE, ["birth-registration"])
        m.publish()
        m.start_gateways({"national": {}, "hanoi": {}})
        yield m
    finally:
        m.stop()


def _assertion(mesh: Mesh) -> str:
    gw = mesh.gateways["hanoi"]
    body = {"iss": "hanoi", "aud": "national", "sub": CLIENT, "svc": SERVICE, "purpose": "birth-registration",
            "jti": uuid.uuid4().hex, "txn": "tx-workers"}  # fmt: skip
    return tokens.sign(gw.key.key, gw.key.kid, body, lifetime=15)


def _send_on_fresh_connections(mesh: Mesh, assertion: str, times: int) -> list[tuple[int, str]]:
    """(status, lienthong code) of each answer, "" for a success; a refusal's X-Road-Error is checked here."""
    url = f"{mesh.gateways['national'].url}/r1/{SERVICE}/items/1"
    answers = []
    for _ in range(times):
        with mesh.gateways["hanoi"].hop_client(timeout=60) as hop:  # a new client: a new TLS connection
            r = hop.get(url, headers={"X-Lienthong-Assertion": assertion})
        xtype = r.headers.get("x-road-error", "")
        if r.status_code == 200:
            assert not xtype, r.headers
            answers.append((200, ""))
        else:
            body = r.json()
            assert xtype == body["xroad_type"] and (body["code"] != "invalid-assertion" or xtype == REFUSED), body
            if body["code"] == "invalid-assertion":
                assert "replay" in body["detail"].lower(), body  # it names the replay, not some other fault
            answers.append((r.status_code, body["code"]))
    return answers


def test_the_same_assertion_is_accepted_once_across_workers(mesh: Mesh) -> None:
    answers = _send_on_fresh_connections(mesh, _assertion(mesh), CONNECTIONS)
    assert [a for a in answers if a[0] == 200] == [(200, "")], answers
    assert answers.count((401, "invalid-assertion")) == CONNECTIONS - 1, answers


def test_fresh_assertions_are_each_accepted_once(mesh: Mesh) -> None:
    for _ in range(3):
        assert _send_on_fresh_connections(mesh, _assertion(mesh), 2) == [(200, ""), (401, "invalid-assertion")]
