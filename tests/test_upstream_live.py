"""Issue 13, High 4, on live meshes: repointing an approved service leaves calls on its approved upstream until an
admin approves the change (real registry), and a hosting gateway checks every new connector connection against the
snapshot's upstream policy plus its own endpoints, answering 502 upstream-refused, audited (stand-in registry, which
can publish what a real registry would refuse)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis

from lienthong.redis_connection import EmbeddedRedis
from tests.mesh_support import MESH_TLS, Mesh, call_headers

PERSONS = "VN/GOV/BCA/population/persons"
CLIENT = "VN/PROV/NGHEAN/civil-status"
HTTP = httpx.Client(timeout=10, verify=MESH_TLS)


def _declare(m: Mesh) -> None:
    m.add_gateway("national")
    for member in ("VN/GOV/BCA", "VN/PROV/NGHEAN"):
        m.add_member(member, "national")
    for sub in ("VN/GOV/BCA/population", CLIENT):
        m.add_subsystem(sub)
    m.add_client(CLIENT)


def _call(m: Mesh, service: str, path: str = "/persons/001") -> httpx.Response:
    return HTTP.get(f"{m.gateways['national'].url}/r1/{service}{path}", headers=call_headers(m, CLIENT, "national"))


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


# ---- repointing (real registry) -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory, redis_server: EmbeddedRedis) -> Iterator[Mesh]:
    root = tmp_path_factory.mktemp("repoint")
    m = Mesh(root, root / "logs", redis_url=redis_server.url.rsplit("/", 1)[0] + "/9")
    redis.Redis.from_url(m.redis_url).flushdb()
    _declare(m)
    try:
        m.start_registry()
        # the echoes as the mesh serves them to the gateway: over HTTPS, with the provider's certificate
        m.first = m.live_upstream(PERSONS, m.start_upstream("echo-first"))  # type: ignore[attr-defined]
        m.second = m.live_upstream(PERSONS, m.start_upstream("echo-second"))  # type: ignore[attr-defined]
        m.add_service(PERSONS, "national", m.first, [("GET", "/persons/{id}")])  # type: ignore[attr-defined]
        m.add_grant("g", CLIENT, PERSONS, ["birth-registration"])
        m.publish()
        m.start_gateway("national")
        yield m
    finally:
        m.stop()


def _reached(m: Mesh, version: int) -> int:
    m.wait_version(version, timeout=60)
    r = _call(m, PERSONS)
    assert r.status_code == 200, r.text
    return int(r.json()["echo"]["port"])


def test_a_repointed_service_keeps_its_approved_upstream_until_approved(real: Mesh) -> None:
    admin = real.registry_handle.admin_client()
    first, second = _port(real.first), _port(real.second)  # type: ignore[attr-defined]
    version = int(admin.snapshot(gateway="national").headers["etag"].strip('"'))
    assert _reached(real, version) == first
    current = admin.get_service(PERSONS)
    keep = ("version_label", "name", "description", "gateway", "timeout_ms", "openapi")
    pending = admin.update_service(PERSONS, {**{k: current[k] for k in keep}, "upstream_url": real.second})  # type: ignore[attr-defined]
    assert pending["approved"] is False
    version = int(admin.snapshot(gateway="national").headers["etag"].strip('"'))
    assert _reached(real, version) == first  # the gateway took the new version, and still calls the approved upstream
    admin.approve_service(PERSONS)
    version = int(admin.snapshot(gateway="national").headers["etag"].strip('"'))
    assert _reached(real, version) == second


# ---- the gateway's own check (stand-in registry) ------------------------------------------------------------------


@pytest.fixture(scope="module")
def standin(tmp_path_factory: pytest.TempPathFactory, redis_server: EmbeddedRedis) -> Iterator[Mesh]:
    root = tmp_path_factory.mktemp("refuse")
    m = Mesh(root, root / "logs", policies="authn,authz,audit", registry="standin",
             redis_url=redis_server.url.rsplit("/", 1)[0] + "/10")  # fmt: skip
    _declare(m)
    try:
        m.start_registry()
        ok = m.live_upstream("VN/GOV/BCA/population/ok", m.start_upstream("echo-ok"))  # its HTTPS address
        other = m.live_upstream("VN/GOV/BCA/population/other", m.start_upstream("echo-other"))
        gateway = m.gateways["national"].url
        m.targets = {  # type: ignore[attr-defined]
            "ok": ok,
            "other": other,  # an echo answers there, but its port is not allowlisted at first
            "self": gateway,  # the hosting gateway itself
            "registry": m.registry_url,  # the registry this gateway reads (a stand-in here)
            "redis": "http://" + m.redis_url.split("//", 1)[1].split("/")[0],
            "metadata": "http://169.254.169.254",
            "localhost": f"http://localhost:{_port(ok)}",  # a name: resolved, and refused by what it is
        }
        for name, upstream in m.targets.items():  # type: ignore[attr-defined]
            service = f"VN/GOV/BCA/population/{name}"
            m.add_service(service, "national", upstream, [("GET", "/persons/{id}")])
            m.add_grant(f"g-{name}", CLIENT, service, ["birth-registration"])
        m.doc["upstream_policy"] = {"allow": [f"127.0.0.1:{_port(ok)}"], "mesh": []}
        m.publish()
        m.start_gateway("national")
        yield m
    finally:
        m.stop()


def _refused(r: httpx.Response) -> dict[str, Any]:
    assert r.status_code == 502, r.text
    body: dict[str, Any] = r.json()
    assert body["code"] == "upstream-refused"
    assert r.headers["x-road-error"] == body["xroad_type"] == "Server.ServerProxy.ServiceFailed"
    return body


def test_the_gateway_refuses_connectors_the_policy_refuses_and_audits_it(standin: Mesh) -> None:
    assert _call(standin, "VN/GOV/BCA/population/ok").status_code == 200
    refused = {}
    for name in ("other", "self", "registry", "redis", "metadata", "localhost"):
        r = _call(standin, f"VN/GOV/BCA/population/{name}")
        _refused(r)
        refused[name] = r.headers["x-road-id"]
    audit_dir = standin.gateways["national"].data_dir / "audit"
    deadline = time.monotonic() + 60  # the audit writer flushes on its own schedule; this only catches a hang
    while True:
        text = b"".join(p.read_bytes() for p in audit_dir.glob("audit-*.jsonl"))
        if all(txid.encode() in text for txid in refused.values()):
            break
        assert time.monotonic() < deadline, "the refusals never reached the audit log"
        time.sleep(0.2)
    assert text.count(b'"upstream-refused"') >= len(refused)


def test_the_published_allowlist_is_what_the_gateway_applies_but_never_to_its_own_endpoints(standin: Mesh) -> None:
    standin.doc["upstream_policy"] = {"allow": ["127.0.0.1", "169.254.0.0/16"], "mesh": []}
    standin.wait_version(standin.publish(), timeout=60)
    assert _call(standin, "VN/GOV/BCA/population/other").status_code == 200  # loopback now allowlisted
    r = _call(standin, "VN/GOV/BCA/population/metadata")
    # allowlisted: the gateway tries; what answers (a timeout, or a network's egress filter) is not its refusal
    assert "upstream-refused" not in r.text, r.text
    # its own address, its registry and its Redis need an entry with their exact port
    for name in ("self", "registry", "redis"):
        _refused(_call(standin, f"VN/GOV/BCA/population/{name}"))
    # the registry lists the mesh's own endpoints: they stay refused under a port-less allow entry
    ok_port = _port(standin.targets["ok"])  # type: ignore[attr-defined]
    standin.doc["upstream_policy"] = {"allow": ["127.0.0.1"], "mesh": [f"127.0.0.1:{ok_port}"]}
    standin.wait_version(standin.publish(), timeout=60)
    standin.gateways["national"].proc.stop()  # pooled connections were checked when made; start afresh
    standin.start_gateway("national")
    _refused(_call(standin, "VN/GOV/BCA/population/ok"))
