"""The gateway's pure parts, without processes: path hygiene, the breaker's states, the request hash, and the
snapshot client's checks (signature, version order, gateway, on-disk cache and its age)."""

from __future__ import annotations

import base64
import hashlib
import os
import time
from pathlib import Path

import pytest

from gateway.breaker import CircuitBreaker
from gateway.calls import transaction_id
from gateway.paths import parse_r1
from gateway.request_hash import request_hash
from gateway.settings import GatewaySettings, parse_policies
from gateway.snapshot_client import SnapshotClient
from lienthong.problem import Problem
from lienthong.snapshot import SnapshotError
from tests.mesh_support import KeyPair, make_key, sign_snapshot

SERVICE = "/r1/VN/GOV/BCA/population/persons"


@pytest.mark.parametrize(
    ("raw", "service", "path"),
    [
        (f"{SERVICE}/persons/001%20203", "VN/GOV/BCA/population/persons", "/persons/001 203"),
        (SERVICE, "VN/GOV/BCA/population/persons", "/"),
        (f"{SERVICE}/", "VN/GOV/BCA/population/persons", "/"),
    ],
)
def test_parse_r1_splits_service_and_provider_path(raw: str, service: str, path: str) -> None:
    parsed = parse_r1(raw)
    assert parsed.service_id == service and parsed.provider_path == path


@pytest.mark.parametrize(
    "raw",
    [f"{SERVICE}/a/../b", f"{SERVICE}/./b", f"{SERVICE}/a//b", f"{SERVICE}/a%2Fb", f"{SERVICE}/a%2fb",
     f"{SERVICE}/%2e%2e/b", f"{SERVICE}/a%5Cb", f"{SERVICE}/a/b/", "/r1/VN/GOV/../BCA/population/persons/x"],
)  # fmt: skip
def test_parse_r1_refuses_path_tricks(raw: str) -> None:
    with pytest.raises(Problem) as caught:
        parse_r1(raw)
    assert caught.value.status == 400 and caught.value.code == "invalid-path" and caught.value.field == "path"


def test_parse_r1_metaservices() -> None:
    assert parse_r1("/r1/listClients").metaservice == "listClients"
    listed = parse_r1("/r1/VN/GOV/BCA/population/allowedMethods")
    assert listed.metaservice == "allowedMethods" and listed.subsystem == "VN/GOV/BCA/population"
    with pytest.raises(Problem) as caught:
        parse_r1("/r1/VN/GOV/BCA")
    assert caught.value.code == "unknown-service"


def test_breaker_opens_refuses_then_lets_one_probe_through() -> None:
    breaker = CircuitBreaker("u", failures_to_open=2, open_seconds=5)
    breaker.before_call(now=0)
    breaker.failure(now=0)
    breaker.before_call(now=0)  # one failure: still closed
    breaker.failure(now=1)
    with pytest.raises(Problem) as caught:
        breaker.before_call(now=2)
    assert caught.value.status == 503 and caught.value.code == "circuit-open"
    assert int(caught.value.headers["Retry-After"]) >= 1
    breaker.before_call(now=6.1)  # half-open: the probe goes
    with pytest.raises(Problem):
        breaker.before_call(now=6.2)  # ... and only the probe
    breaker.failure(now=6.3)  # the probe failed: open again for a full period
    with pytest.raises(Problem):
        breaker.before_call(now=10)
    breaker.before_call(now=11.4)
    breaker.success()
    assert breaker.state == "closed"
    breaker.before_call(now=11.5)
    breaker.before_call(now=11.6)


def test_request_hash_and_transaction_id() -> None:
    """PR-REST 1.0.4 §4.3: base64 SHA512(SHA512(headers) + SHA512(body)); SHA512(headers) alone without a body."""
    head = b"POST /r1/x?a=1 HTTP/1.1\r\naccept: */*\r\nx-b: 2\r\n"
    with_body = hashlib.sha512(hashlib.sha512(head).digest() + hashlib.sha512(b"{}").digest()).digest()
    headers = [("X-B", "2"), ("Host", "gw"), ("accept", "*/*"), ("content-length", "2")]  # hop fields left out
    assert request_hash("POST", "/r1/x?a=1", headers, b"{}") == base64.b64encode(with_body).decode()
    no_body = hashlib.sha512(b"GET /r1/x HTTP/1.1\r\n").digest()
    assert request_hash("GET", "/r1/x", [], b"") == base64.b64encode(no_body).decode()
    assert len(base64.b64decode(request_hash("GET", "/r1/y", [], b""))) == 64
    assert len(transaction_id({})) == 32
    assert transaction_id({"x-road-id": "abc-1"}) == "abc-1"
    with pytest.raises(Problem) as caught:
        transaction_id({"x-road-id": "x" * 200})
    assert caught.value.field == "X-Road-Id"


def test_policies_option() -> None:
    assert parse_policies("none") == frozenset()
    assert "audit" in parse_policies("all")
    assert parse_policies("authn, authz") == {"authn", "authz"}
    with pytest.raises(ValueError, match="unknown policies"):
        parse_policies("authn,firewall")


def test_settings_travel_through_the_environment(tmp_path: Path) -> None:
    settings = GatewaySettings(code="nghean", registry_url="http://r", registry_key_file=tmp_path / "r.jwk",
                               key_file=tmp_path / "g.key", kid="k1", data_dir=tmp_path, max_snapshot_age=30,
                               policies=frozenset({"authn"}), audit_hmac_key=b"\x01\x02")  # fmt: skip
    assert GatewaySettings.from_env(settings.to_env()) == settings
    with pytest.raises(ValueError):
        GatewaySettings(code="Not A Code", registry_url="", registry_key_file=tmp_path, key_file=tmp_path, kid="",
                        data_dir=tmp_path)  # fmt: skip


# -- the snapshot client ----------------------------------------------------------------------------------------


def _doc(version: int, gateway: str = "nghean") -> dict[str, object]:
    return {"version": version, "gateway": gateway, "instance": "VN", "members": [], "subsystems": [],
            "gateways": [], "services": [], "upstreams": {}, "clients": [], "grants": []}  # fmt: skip


def _client(tmp_path: Path, registry: KeyPair, max_age: float = 60) -> SnapshotClient:
    gateway = make_key(tmp_path / "gw.key")
    return SnapshotClient(code="nghean", registry_url="http://127.0.0.1:1", registry_key=registry.key.public_key(),
                          key=gateway.key, kid=gateway.kid, cache_path=tmp_path / "snapshot.jsonl",
                          max_age=max_age)  # fmt: skip


def test_cache_start_verifies_the_signature_and_keeps_the_confirmation_time(tmp_path: Path) -> None:
    registry = make_key(tmp_path / "registry.key")
    cache = tmp_path / "snapshot.jsonl"
    cache.write_bytes(sign_snapshot(_doc(7), registry))
    confirmed = time.time() - 100
    os.utime(cache, (confirmed, confirmed))
    client = _client(tmp_path, registry, max_age=60)
    assert client.load_cache() and client.current is not None and client.current.version == 7
    stale = client.staleness()
    assert stale.stale and "version 7" in stale.detail and "maximum age of 60 s" in stale.detail

    impostor = make_key(tmp_path / "impostor.key")
    cache.write_bytes(sign_snapshot(_doc(8), impostor))
    fresh = _client(tmp_path, registry)
    assert not fresh.load_cache() and fresh.current is None
    assert fresh.staleness().stale and "no configuration snapshot" in fresh.staleness().detail


def test_install_refuses_an_older_version_or_another_gateways_snapshot(tmp_path: Path) -> None:
    registry = make_key(tmp_path / "registry.key")
    client = _client(tmp_path, registry)
    _opened, built = client._build(sign_snapshot(_doc(5), registry), time.time())
    assert built is not None
    client._swap(built)
    assert client._build(sign_snapshot(_doc(5), registry), time.time())[1] is None  # a confirmation, not a swap
    with pytest.raises(SnapshotError, match="lower"):
        client._build(sign_snapshot(_doc(4), registry), time.time())
    with pytest.raises(SnapshotError, match="for gateway"):
        client._build(sign_snapshot(_doc(6, gateway="hanoi"), registry), time.time())
    assert client.current is built and not client.staleness().stale


def _sample(name: str, labels: dict[str, str]) -> float:
    from prometheus_client import REGISTRY

    value = REGISTRY.get_sample_value(name, labels)
    return value or 0.0


def test_metrics_folded_in_memory_reach_prometheus_exactly_at_flush() -> None:
    from gateway import metrics

    metrics.flush()
    # no call context: no service, an unidentified consumer; the outcome class from status and code
    who = {"service": "none", "consumer": "(unidentified)"}
    ok = {"role": "unit-test", "status": "2xx", "error": "", "outcome": "found", **who}
    refused = {"role": "unit-test", "status": "4xx", "error": "access-denied", "outcome": "not-permitted", **who}
    before_ok, before_refused = _sample("lienthong_gateway_requests_total", ok), _sample(
        "lienthong_gateway_requests_total", refused
    )
    le_5ms = {"role": "unit-test", "le": "0.005", **who}
    before_bucket = _sample("lienthong_gateway_request_seconds_bucket", le_5ms)
    before_sum = _sample("lienthong_gateway_request_seconds_sum", {"role": "unit-test", **who})
    for _ in range(7):
        metrics.count("unit-test", 200, "", 0.004)
    for _ in range(3):
        metrics.count("unit-test", 403, "access-denied", 0.2)
    # nothing reaches prometheus before the flush: the hot path only counts in memory
    assert _sample("lienthong_gateway_requests_total", ok) == before_ok
    metrics.flush()
    assert _sample("lienthong_gateway_requests_total", ok) == before_ok + 7
    assert _sample("lienthong_gateway_requests_total", refused) == before_refused + 3
    # buckets are cumulative: the 7 calls of 4 ms are under 5 ms, the 3 of 200 ms are not
    assert _sample("lienthong_gateway_request_seconds_bucket", le_5ms) == before_bucket + 7
    assert _sample("lienthong_gateway_request_seconds_sum", {"role": "unit-test", **who}) == pytest.approx(
        before_sum + 7 * 0.004 + 3 * 0.2
    )
    metrics.flush()  # a second flush adds nothing
    assert _sample("lienthong_gateway_requests_total", ok) == before_ok + 7
