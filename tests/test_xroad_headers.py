"""Issue 15, response headers, judged against X-Road's Message Protocol for REST (PR-REST 1.0.4, "X-Road specific
headers returned in the response"): "The response contains some X-Road specific headers that are set by the
provider Security Server. The provider service SHOULD NOT set these headers since in that case they will be
overwritten": X-Road-Client, X-Road-Service, X-Road-Id, X-Road-Request-Hash, X-Road-Error, X-Road-Request-Id.

A live mesh (real registry, TLS): a province calls the national database through its home gateway; the upstream is
the echo app, which sets a forged X-Road-Error of its own (tests/mesh_support.echo_app).
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
import redis

from lienthong.redis_connection import EmbeddedRedis
from tests.mesh_support import MESH_TLS, Mesh, call_headers

HANG = 60.0  # seconds: a bound that only catches a hang
PERSONS = "VN/GOV/BCA/population/persons"
CLIENT = "VN/PROV/NGHEAN/civil-status"
PERSON = "040203004567"


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory, redis_server: EmbeddedRedis) -> Iterator[Mesh]:
    root = tmp_path_factory.mktemp("xroad-headers")
    m = Mesh(root, root / "logs", policies="authn,authz", redis_url=redis_server.url.rsplit("/", 1)[0] + "/13")
    redis.Redis.from_url(m.redis_url).flushdb()
    try:
        for code in ("national", "nghean"):
            m.add_gateway(code)
        m.start_registry()
        upstream = m.start_upstream("echo")
        m.add_parties({"VN/GOV/BCA": "national", "VN/PROV/NGHEAN": "nghean"},
                      ("VN/GOV/BCA/population", CLIENT), [CLIENT])  # fmt: skip
        m.add_service(PERSONS, "national", upstream, [("GET", "/persons/{id}")], subject_param="id")
        m.add_grant("g", CLIENT, PERSONS, ["birth-registration"])
        version = m.publish()
        m.start_gateway("national")
        m.start_gateway("nghean")
        m.wait_version(version, timeout=HANG)
        yield m
    finally:
        m.stop()


def _get(mesh: Mesh, path: str, headers: dict[str, str]) -> httpx.Response:
    with httpx.Client(verify=MESH_TLS, timeout=HANG) as http:
        return http.get(f"{mesh.gateways['nghean'].url}/r1/{path}", headers=headers)


def test_the_headers_are_set_by_the_mesh_and_unique_per_request(mesh: Mesh) -> None:
    """PR-REST: X-Road-Client "specifies the member/subsystem that is used as a service client", X-Road-Service "the
    serviceId that is invoked", X-Road-Request-Id "unique identifier for the request" (X-Road-Id is the client's
    message id, which two requests may share)."""
    first = _get(mesh, f"{PERSONS}/persons/{PERSON}", call_headers(mesh, CLIENT, "nghean", **{"X-Road-Id": "same"}))
    second = _get(mesh, f"{PERSONS}/persons/{PERSON}", call_headers(mesh, CLIENT, "nghean", **{"X-Road-Id": "same"}))
    for r in (first, second):
        assert r.status_code == 200, r.text
        assert r.headers["x-road-client"] == CLIENT
        assert r.headers["x-road-service"] == PERSONS
        assert r.headers["x-road-id"] == "same"
        assert "x-road-error" not in r.headers  # the upstream's forged one is overwritten, as PR-REST says
        assert len(r.headers.get_list("x-road-client")) == 1  # the hosting gateway's copy is not passed on twice
    assert first.headers["x-road-request-id"] != second.headers["x-road-request-id"]


def test_a_refusal_names_the_client_and_service_it_established(mesh: Mesh) -> None:
    """A refusal after routing still says which client and service it refused; before authentication it names
    neither (nothing was established, and echoing an unverified claim would make it look established)."""
    refused = _get(mesh, f"{PERSONS}/households/H1", call_headers(mesh, CLIENT, "nghean"))
    assert refused.status_code == 404 and refused.headers["x-road-error"]
    assert refused.headers["x-road-client"] == CLIENT and refused.headers["x-road-request-id"]
    anonymous = _get(mesh, f"{PERSONS}/persons/{PERSON}", {"X-Road-Client": CLIENT})
    assert anonymous.status_code == 401
    assert "x-road-client" not in anonymous.headers and "x-road-service" not in anonymous.headers
    assert anonymous.headers["x-road-request-id"]
