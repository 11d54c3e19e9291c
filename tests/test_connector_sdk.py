"""The connector SDK's gate and plumbing: only the hosting gateway's valid, fresh, unreplayed assertion gets in
(protocol §4.2); health and readiness; every error is problem+json; the CLI serves a connector as a real process."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import jwt
import pytest

from connectors.population import CONNECTOR
from connectors.sdk import ConnectorConfig
from connectors.sdk.call import CallInfo
from lienthong import keys, tokens
from tests.connector_support import Caller, SigningGateway, ThreadServer, assert_problem, free_port, serve
from tests.procs import Proc, lienthong

SERVICE = CONNECTOR.service_id
UNKNOWN = "040199999999"  # well-formed, not on file: a valid call answers 404


@pytest.fixture(scope="module")
def gateway() -> SigningGateway:
    return SigningGateway.make()


@pytest.fixture(scope="module")
def caller(gateway: SigningGateway, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Caller]:
    url = f"sqlite:///{tmp_path_factory.mktemp('sdk') / 'population.sqlite'}"
    with serve(CONNECTOR, gateway, url) as server:
        yield Caller(server, gateway, SERVICE)


def _get(caller: Caller, token: str | None) -> httpx.Response:
    headers = {} if token is None else {"X-Lienthong-Assertion": token}
    return caller.http.get(f"/persons/{UNKNOWN}", headers=headers)


def test_a_valid_assertion_gets_through(caller: Caller, gateway: SigningGateway) -> None:
    assert_problem(_get(caller, gateway.assertion(SERVICE)), 404, "not-found")


def test_no_assertion_is_401(caller: Caller) -> None:
    assert_problem(_get(caller, None), 401, "invalid-assertion")
    r = caller.http.post("/persons/batch", json={"ids": [UNKNOWN]})
    assert_problem(r, 401, "invalid-assertion")


def test_bad_assertions_are_401(caller: Caller, gateway: SigningGateway) -> None:
    stranger = SigningGateway.make()  # same gateway code, key not registered for it
    other_gateway = SigningGateway(code="hanoi", key=gateway.key, kid=gateway.kid)  # right key, wrong issuer
    now = time.time()
    bad = {
        "foreign key": stranger.assertion(SERVICE),
        "wrong audience": gateway.assertion(SERVICE, aud="connector:VN/GOV/BTC/business-registry/enterprises"),
        "another service": gateway.assertion(SERVICE, svc="VN/GOV/BTC/business-registry/enterprises"),
        "wrong issuer": other_gateway.assertion(SERVICE),
        "expired": tokens.sign(
            gateway.key,
            gateway.kid,
            {"iss": gateway.code, "aud": f"connector:{SERVICE}", "sub": "VN/GOV/BCA/x"},
            lifetime=10,
            now=now - 60,
        ),
        "too long-lived": gateway.assertion(SERVICE, lifetime=300),
        "no consumer": tokens.sign(
            gateway.key, gateway.kid, {"iss": gateway.code, "aud": f"connector:{SERVICE}"}, lifetime=10
        ),
        "hs256": jwt.encode(
            {
                "iss": gateway.code,
                "aud": f"connector:{SERVICE}",
                "sub": "x",
                "jti": "j",
                "iat": int(now),
                "exp": int(now) + 10,
            },
            "secret",
            algorithm="HS256",
            headers={"kid": gateway.kid},
        ),
        "garbage": "not.a.jwt",
        "fields not a list": gateway.assertion(SERVICE, fields="full_name"),
    }
    for why, token in bad.items():
        r = _get(caller, token)
        assert r.status_code == 401, (why, r.text)
        assert_problem(r, 401, "invalid-assertion")


def test_a_replayed_assertion_is_401(caller: Caller, gateway: SigningGateway) -> None:
    token = gateway.assertion(SERVICE)
    assert _get(caller, token).status_code == 404
    body = assert_problem(_get(caller, token), 401, "invalid-assertion")
    assert "replay" in body["detail"]


def test_health_and_readiness_need_no_assertion(caller: Caller) -> None:
    assert caller.http.get("/healthz").json() == {"status": "ok"}
    assert caller.http.get("/readyz").status_code == 200
    spec = caller.http.get("/openapi.json").json()
    assert spec["paths"]["/persons/{id}"]["get"]["operationId"] == "getPerson"


def test_readyz_fails_without_gateway_keys(tmp_path: Path) -> None:
    key = keys.generate()
    keys.save_private(key, tmp_path / "integrator.pem")
    dead_registry = f"http://127.0.0.1:{free_port()}"
    config = ConnectorConfig(
        gateway="national",
        database_url=f"sqlite:///{tmp_path / 'db.sqlite'}",
        registry_url=dead_registry,
        key_path=tmp_path / "integrator.pem",
        kid="k1",
        register=True,
    )
    server = ThreadServer(CONNECTOR, config).start()  # starts although the registry is down
    try:
        r = httpx.get(server.url + "/readyz")
        body = assert_problem(r, 503, "not-ready")
        assert "gateway keys" in body["detail"]
        assert httpx.get(server.url + "/healthz").status_code == 200
    finally:
        server.stop()


def test_errors_are_problems(caller: Caller) -> None:
    assert_problem(caller.get("/no/such/path"), 404, "unknown-endpoint")
    assert_problem(caller.get("/changes", params={"since": "0", "colour": "red"}), 400, "invalid-parameter", "colour")
    r = caller.http.post(
        "/persons/batch", content=b"{not json", headers={**caller.headers(), "Content-Type": "application/json"}
    )
    assert_problem(r, 400, "invalid-body", "body")
    r = caller.http.post(
        "/persons/batch", content=b"\xff\xfe", headers={**caller.headers(), "Content-Type": "application/json"}
    )
    assert_problem(r, 400, "invalid-body", "body")
    assert_problem(caller.post("/persons/batch", {"ids": ["x"], "extra": 1}), 400, "invalid-body", "extra")
    assert_problem(caller.post("/persons/batch", {"ids": [1]}), 400, "invalid-body", "ids[0]")


def test_call_info_field_rules() -> None:
    call = CallInfo("VN/GOV/BCA/x", "p", ("full_name", "household", "residence.permanent.address"), "t", "national")
    assert call.allows("full_name") and call.allows("household.id") and call.allows("residence")
    assert not call.allows("phone") and not call.allows("residence.temporary.address")
    assert CallInfo("c", None, None, "t", "g").allows("anything")


def test_cli_serves_a_connector_as_a_process(tmp_path: Path, gateway: SigningGateway) -> None:
    keys_file = tmp_path / "gateway-keys.json"
    keys_file.write_text(json.dumps(gateway.jwks))
    port = free_port()
    proc = Proc(
        "population",
        lienthong(
            "connector",
            "serve",
            "population",
            "--insecure-http",
            "--port",
            str(port),
            "--gateway",
            gateway.code,
            "--gateway-keys",
            str(keys_file),
            "--database-url",
            f"sqlite:///{tmp_path / 'p.sqlite'}",
        ),
        tmp_path,
    ).start()
    try:
        proc.wait_http(f"http://127.0.0.1:{port}/readyz")
        base = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{base}/persons/{UNKNOWN}").status_code == 401
        r = httpx.get(f"{base}/persons/{UNKNOWN}", headers={"X-Lienthong-Assertion": gateway.assertion(SERVICE)})
        assert_problem(r, 404, "not-found")
    finally:
        proc.stop()
    assert UNKNOWN not in proc.log_tail(100_000)  # no personal ID in clear text in the logs
