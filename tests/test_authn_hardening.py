"""Authentication hardening on a live mesh (issue 13: findings 9, 10, 11 and two Low ones), each as a class:

- a client token is good only at its member's home gateway, whatever the `aud` says and whatever the path
  (service calls hosted there or elsewhere, metaservices);
- an assertion's `jti` is the signing gateway's nonce, the client's X-Road-Id travels as `txn`: consumers sharing an
  X-Road-Id, or one consumer reusing its own, never collide, while a replayed assertion still fails at the hosting
  gateway and at the connector;
- client tokens over 4 KiB are refused (the cache's byte budget is tested in test_policy_authn.py);
- `aud` is one audience, a string: a list (even of one) is refused by the gateways and the registry;
- authn runs before routing: without valid credentials every service path gets the same answer, whether the
  service, endpoint or subsystem exists or not (a differential test with generated paths).

Real registry, real gateways, a real population connector and echo upstreams (tests/mesh_support.py).
"""

from __future__ import annotations

import sqlite3
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.xroad_errors import XROAD_TYPES
from lienthong import keys, tokens
from lienthong.redis_connection import EmbeddedRedis, free_port
from tests.mesh_support import LIENTHONG_ACCEPT, MESH_TLS, Mesh, call_headers, client_token
from tests.procs import Proc, lienthong

REPO = Path(__file__).resolve().parent.parent
POP = "VN/GOV/BCA/population/persons"  # a real connector at national
ECHO = "VN/GOV/BCA/population/echo"  # an echo upstream at national
NA_ECHO = "VN/PROV/NGHEAN/records/echo"  # an echo upstream at nghean
HN = "VN/PROV/HANOI/portal"  # homed at hanoi
NA = "VN/PROV/NGHEAN/civil-status"  # homed at nghean
MOJ = "VN/GOV/BTP/justice"  # homed at national, like the services there
HOME = {HN: "hanoi", NA: "nghean", MOJ: "national"}
PURPOSE = "birth-registration"
HTTP = httpx.Client(timeout=30, verify=MESH_TLS)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory, redis_server: EmbeddedRedis) -> Iterator[Mesh]:
    root = tmp_path_factory.mktemp("authn")
    m = Mesh(root, root / "logs", redis_url=redis_server.url.rsplit("/", 1)[0] + "/11")
    redis.Redis.from_url(m.redis_url).flushdb()
    connector: Proc | None = None
    try:
        data = root / "data"
        subprocess.run(lienthong("data", "generate", "--people", "100", "--seed", "5", "--out", str(data)),
                       check=True, capture_output=True)  # fmt: skip
        with sqlite3.connect(data / "population.sqlite") as db:
            m.person = db.execute("SELECT id FROM persons ORDER BY id LIMIT 1").fetchone()[0]  # type: ignore[attr-defined]
        for code in ("national", "hanoi", "nghean"):
            m.add_gateway(code)
        m.start_registry()
        keys_file = root / "national-keys.json"
        keys_file.write_bytes(orjson.dumps([m.gateways["national"].key.jwk]))
        port = free_port()
        m.connector_url = f"https://127.0.0.1:{port}"  # type: ignore[attr-defined]
        connector = Proc("connector-population", lienthong(
            "connector", "serve", "population", "--port", str(port), "--gateway", "national", "--database-url",
            f"sqlite:///{data / 'population.sqlite'}", "--gateway-keys", str(keys_file), "--log-level", "warning",
            *m.connector_tls("population", POP),
        ), m.log_dir).start()  # fmt: skip
        for member, home in (("VN/GOV/BCA", "national"), ("VN/GOV/BTP", "national"), ("VN/PROV/HANOI", "hanoi"),
                             ("VN/PROV/NGHEAN", "nghean")):  # fmt: skip
            m.add_member(member, home)
        for sub in ("VN/GOV/BCA/population", "VN/PROV/NGHEAN/records", HN, NA, MOJ):
            m.add_subsystem(sub)
        for client in (HN, NA, MOJ):
            m.add_client(client)
        population = yaml.safe_load((REPO / "openapi" / "population.yaml").read_text())
        m.add_service(POP, "national", m.connector_url, openapi=population)  # type: ignore[attr-defined]
        m.add_service(ECHO, "national", m.start_upstream("echo-national"), [("GET", "/items/{id}")])
        m.add_service(NA_ECHO, "nghean", m.start_upstream("echo-nghean"), [("GET", "/items/{id}")])
        for client in (HN, NA, MOJ):
            for service in (POP, ECHO, NA_ECHO):
                m.add_grant(f"g-{client}-{service}", client, service, [PURPOSE])
        m.publish()
        m.gateway_cert("national")  # the connector answers its hosting gateway's certificate only
        connector.wait_http(
            f"{m.connector_url}/healthz",  # type: ignore[attr-defined]
            timeout=60,
            verify=m.gateways["national"].hop_verify,
        )
        m.start_gateways({"national": {}, "hanoi": {}, "nghean": {}})
        yield m
    finally:
        m.stop()
        if connector is not None:
            connector.stop()


def person_path(mesh: Mesh) -> str:
    return f"/r1/{POP}/persons/{mesh.person}"  # type: ignore[attr-defined]


def call(mesh: Mesh, gateway: str, client: str, path: str, *, aud: str | None = None, method: str = "GET",
         **extra: str) -> httpx.Response:  # fmt: skip
    """A call of `client` at `gateway` with a fresh token addressed to `aud` (the gateway called, by default)."""
    headers = call_headers(mesh, client, aud or gateway, **extra)
    return HTTP.request(method, f"{mesh.gateways[gateway].url}{path}", headers=headers)


def refused(r: httpx.Response, status: int, code: str, field: str | None = None) -> dict[str, Any]:
    """A refusal as lienthong's own clients (Accept: problem+json) and the mesh hop see it: the precise status and
    code, and X-Road-Error the X-Road type of that code (PR-REST §4.3, docs/protocol.md §6)."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json;charset=utf-8", r.headers
    body: dict[str, Any] = r.json()
    assert body["code"] == code and body["status"] == status, body
    assert r.headers["x-road-error"] == body["xroad_type"] == XROAD_TYPES[code], body
    if field is not None:
        assert body.get("field") == field, body
    return body


# -- one home gateway ---------------------------------------------------------------------------------------------

ELSEWHERE = [(HN, "national"), (HN, "nghean"), (NA, "national"), (NA, "hanoi"), (MOJ, "hanoi")]


@pytest.mark.parametrize(("client", "gateway"), ELSEWHERE)
def test_a_client_is_served_only_through_its_home_gateway(mesh: Mesh, client: str, gateway: str) -> None:
    """aud = the gateway called, a valid key, a grant: still 403 unless that gateway is the member's home, for a
    service hosted there (going straight to the hosting gateway), one hosted elsewhere, and every metaservice."""
    paths = [person_path(mesh), f"/r1/{ECHO}/items/1", f"/r1/{NA_ECHO}/items/1", "/r1/listClients",
             "/r1/VN/GOV/BCA/population/listMethods", "/r1/VN/GOV/BCA/population/allowedMethods",
             "/r1/VN/GOV/BCA/population/getOpenAPI?serviceCode=persons"]  # fmt: skip
    for path in paths:
        body = refused(call(mesh, gateway, client, path), 403, "access-denied", field="X-Road-Client")
        assert "home gateway" in body["detail"] and HOME[client] in body["detail"], body
    for path in paths:  # the same calls through the home gateway are served
        assert call(mesh, HOME[client], client, path).status_code == 200, path


# -- X-Road-Id is not a nonce -------------------------------------------------------------------------------------


def test_consumers_sharing_an_x_road_id_are_all_served(mesh: Mesh) -> None:
    """Ha Noi (forwarded), Nghe An (forwarded) and the Ministry of Justice (local at national) send one X-Road-Id to
    a real connector: the connector's replay cache must not see one transaction id as a replayed assertion."""
    shared = f"shared-{uuid.uuid4().hex[:8]}"
    for client in (HN, MOJ, NA):
        r = call(mesh, HOME[client], client, person_path(mesh), **{"X-Road-Id": shared})
        assert r.status_code == 200, (client, r.text)
        assert r.headers["x-road-id"] == shared


def test_one_client_may_reuse_its_x_road_id(mesh: Mesh) -> None:
    again = f"again-{uuid.uuid4().hex[:8]}"
    for client in (HN, MOJ):
        for _ in range(3):
            r = call(mesh, HOME[client], client, person_path(mesh), **{"X-Road-Id": again})
            assert r.status_code == 200, (client, r.text)


def test_the_assertion_nonce_is_the_gateways_own(mesh: Mesh) -> None:
    """Seen by the echo upstream: txn carries X-Road-Id, jti is fresh for every hop and every call."""
    nonces = set()
    for _ in range(2):
        r = call(mesh, "hanoi", HN, f"/r1/{ECHO}/items/1", **{"X-Road-Id": "tx-visible"})
        assert r.status_code == 200, r.text
        claims = r.json()["echo"]["assertion"]
        assert claims["txn"] == "tx-visible" and claims["jti"] != "tx-visible"
        nonces.add(claims["jti"])
    assert len(nonces) == 2


def _gateway_assertion(mesh: Mesh, signer: str, audience: str, **claims: Any) -> str:
    gw = mesh.gateways[signer]
    body = {"iss": signer, "aud": audience, "sub": HN if signer == "hanoi" else MOJ, "svc": POP, "purpose": PURPOSE,
            "jti": uuid.uuid4().hex, "txn": "tx-replayed", **claims}  # fmt: skip
    return tokens.sign(gw.key.key, gw.key.kid, body, lifetime=15)


def test_a_replayed_assertion_is_refused_by_the_hosting_gateway(mesh: Mesh) -> None:
    assertion = _gateway_assertion(mesh, "hanoi", "national")
    url = f"{mesh.gateways['national'].url}{person_path(mesh)}"
    headers = {"X-Lienthong-Assertion": assertion, "X-Road-Id": "tx-replayed"}
    with mesh.gateways["hanoi"].hop_client(timeout=30) as hop:  # the mesh hop's mutual TLS, as hanoi
        assert hop.get(url, headers=headers).status_code == 200
        body = refused(hop.get(url, headers=headers), 401, "invalid-assertion")
        assert "replay" in body["detail"]
        # a new assertion (new nonce) for the same X-Road-Id is a new call, not a replay
        fresh = {"X-Lienthong-Assertion": _gateway_assertion(mesh, "hanoi", "national"), "X-Road-Id": "tx-replayed"}
        assert hop.get(url, headers=fresh).status_code == 200


def test_a_replayed_assertion_is_refused_by_the_connector(mesh: Mesh) -> None:
    url = f"{mesh.connector_url}/persons/{mesh.person}"  # type: ignore[attr-defined]
    assertion = _gateway_assertion(mesh, "national", f"connector:{POP}")
    with mesh.gateways["national"].hop_client(timeout=30) as national:  # the connector answers its gateway only
        assert national.get(url, headers={"X-Lienthong-Assertion": assertion}).status_code == 200
        r = national.get(url, headers={"X-Lienthong-Assertion": assertion})
        assert r.status_code == 401 and "replay" in r.json()["detail"], r.text
        fresh = _gateway_assertion(mesh, "national", f"connector:{POP}")  # same txn, new nonce
        assert national.get(url, headers={"X-Lienthong-Assertion": fresh}).status_code == 200


def test_client_token_jtis_are_never_shared_state(mesh: Mesh) -> None:
    """Client tokens are bearer tokens for their lifetime (at most 300 s): two clients choosing one jti, and each
    using its token twice, are all served; nothing one client sends can burn another's token."""
    for client in (HN, MOJ, HN, MOJ):
        token = client_token(mesh.clients[client], client, HOME[client], jti="same-jti-for-all")
        headers = {"Authorization": f"Bearer {token}", "X-Road-Client": client, "X-Purpose": PURPOSE}
        for _ in range(2):
            r = HTTP.get(f"{mesh.gateways[HOME[client]].url}{person_path(mesh)}", headers=headers)
            assert r.status_code == 200, r.text


# -- token size and audience --------------------------------------------------------------------------------------


@pytest.mark.parametrize("pad", [3200, 6000, 9000])
def test_a_client_token_over_4_kib_is_refused(mesh: Mesh, pad: int) -> None:
    token = client_token(mesh.clients[HN], HN, "hanoi", pad="x" * pad)
    assert len(token) > 4096
    r = HTTP.get(f"{mesh.gateways['hanoi'].url}{person_path(mesh)}",
                 headers={"Authorization": f"Bearer {token}", "X-Road-Client": HN, "X-Purpose": PURPOSE,
                          "Accept": LIENTHONG_ACCEPT})  # fmt: skip
    body = refused(r, 401, "invalid-token", field="Authorization")
    assert "4096" in body["detail"]


@pytest.mark.parametrize("algorithm", ["EdDSA", "ES256"])
def test_a_real_client_token_is_far_below_the_limit(algorithm: keys.Algorithm) -> None:
    key = keys.generate(algorithm)
    long_id = "VN/PROV/THUATHIENHUE/" + "s" * 60
    claims = {"iss": long_id, "sub": long_id, "aud": "thuathienhue", "jti": uuid.uuid4().hex}
    assert len(tokens.sign(key, keys.public_jwk(key)["kid"], claims, lifetime=300)) < 1024


@pytest.mark.parametrize("aud", [["hanoi"], ["hanoi", "national"], ["national", "hanoi"]])
def test_a_client_token_with_a_list_audience_is_refused(mesh: Mesh, aud: list[str]) -> None:
    token = client_token(mesh.clients[HN], HN, aud)  # type: ignore[arg-type]
    r = HTTP.get(f"{mesh.gateways['hanoi'].url}{person_path(mesh)}",
                 headers={"Authorization": f"Bearer {token}", "X-Road-Client": HN, "X-Purpose": PURPOSE,
                          "Accept": LIENTHONG_ACCEPT})  # fmt: skip
    assert "one audience" in refused(r, 401, "invalid-token", field="Authorization")["detail"]


def test_an_assertion_with_a_list_audience_is_refused(mesh: Mesh) -> None:
    assertion = _gateway_assertion(mesh, "hanoi", ["national"])  # type: ignore[arg-type]
    with mesh.gateways["hanoi"].hop_client(timeout=30) as hop:
        r = hop.get(f"{mesh.gateways['national'].url}{person_path(mesh)}", headers={"X-Lienthong-Assertion": assertion})
    assert "one audience" in refused(r, 401, "invalid-assertion")["detail"]
    connector = _gateway_assertion(mesh, "national", [f"connector:{POP}"])  # type: ignore[arg-type]
    with mesh.gateways["national"].hop_client(timeout=30) as national:
        r = national.get(
            f"{mesh.connector_url}/persons/{mesh.person}",  # type: ignore[attr-defined]
            headers={"X-Lienthong-Assertion": connector},
        )
    assert r.status_code == 401 and "one audience" in r.json()["detail"], r.text


@pytest.mark.parametrize("aud", [["registry"], ["registry", "national"]])
def test_the_registry_refuses_a_list_audience(mesh: Mesh, aud: list[str]) -> None:
    handle = mesh.registry_handle
    admin = keys.load_private(handle.admin_key_path)
    url = f"{handle.url}/v1/members"
    for key, kid, iss in ((admin, handle.admin_kid, "admin"), (mesh.clients[HN].key, mesh.clients[HN].kid, HN)):
        good = tokens.sign(key, kid, {"iss": iss, "aud": "registry"})
        assert HTTP.get(url, headers={"Authorization": f"Bearer {good}"}).status_code == 200
        listed = tokens.sign(key, kid, {"iss": iss, "aud": aud})
        r = HTTP.get(url, headers={"Authorization": f"Bearer {listed}"})
        assert r.status_code == 401 and r.json()["code"] == "invalid-token", r.text
        assert "one audience" in r.json()["detail"]


# -- authenticate before routing ----------------------------------------------------------------------------------

KNOWN = [POP, ECHO, NA_ECHO, "VN/GOV/BCA/population/nosuch", "VN/GOV/ZZZ/unknown/svc", "VN/PROV/HANOI/portal/x"]
TAILS = ["/persons/001", "/items/1", "/items", "/no/such/thing", "", "/persons/verify"]
METAS = ["/r1/listClients", "/r1/VN/GOV/BCA/population/listMethods", "/r1/VN/GOV/ZZZ/none/listMethods",
         "/r1/VN/GOV/BCA/population/allowedMethods", "/r1/VN/GOV/BCA/population/getOpenAPI?serviceCode=persons",
         "/r1/VN/GOV/BCA/population/getOpenAPI?serviceCode=nosuch"]  # fmt: skip
SEGMENT = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_", min_size=1, max_size=12)


def _credentials(mesh: Mesh, case: str) -> tuple[dict[str, str], list[str]]:
    """Headers of one kind of bad credentials, and the gateways to try them on."""
    now = time.time()
    if case == "none":
        return {}, ["national", "hanoi"]
    if case == "garbage-token":
        return {"Authorization": "Bearer abc.def.ghi", "X-Road-Client": HN}, ["national", "hanoi"]
    if case == "expired-token":
        old = tokens.sign(mesh.clients[HN].key, mesh.clients[HN].kid, {"iss": HN, "sub": HN, "aud": "hanoi"},
                          now=now - 3600)  # fmt: skip
        return {"Authorization": f"Bearer {old}", "X-Road-Client": HN}, ["hanoi"]
    if case == "another-gateways-token":  # valid, but addressed to national
        return call_headers(mesh, HN, "national"), ["hanoi"]
    if case == "not-my-home":  # valid and addressed to national, but Ha Noi's home is hanoi
        return call_headers(mesh, HN, "national"), ["national"]
    if case == "garbage-assertion":
        return {"X-Lienthong-Assertion": "abc.def.ghi"}, ["national", "hanoi"]
    raise AssertionError(case)


CASES = ["none", "garbage-token", "expired-token", "another-gateways-token", "not-my-home", "garbage-assertion"]


def _answer(r: httpx.Response) -> tuple[int, tuple[tuple[str, str], ...], bytes]:
    """Everything the caller sees but the per-call X-Road-Id, request id, request hash and date; in X-Road's body
    (PR-REST §4.6) the `detail` is that request id, so it is checked against the header and left out too."""
    per_call = ("x-road-id", "x-road-request-id", "x-road-request-hash", "date")
    headers = sorted((k, v) for k, v in r.headers.items() if k not in per_call)
    if not r.headers.get("content-type", "").startswith("application/json"):
        return r.status_code, tuple(headers), r.content
    body = r.json()
    assert body.pop("detail") == r.headers["x-road-request-id"], r.text
    return r.status_code, tuple(headers), orjson.dumps(body, option=orjson.OPT_SORT_KEYS)


def _same_for_generated_paths(base: str, headers: dict[str, str], expected: set[Any]) -> None:
    """Generated service and metaservice paths (any member, subsystem, service, tail, method) answer as expected."""

    @settings(max_examples=25, deadline=None)
    @given(st.lists(SEGMENT, min_size=4, max_size=8), st.sampled_from(["GET", "POST", "PUT", "DELETE"]))
    def generated(segments: list[str], method: str) -> None:
        path = "/r1/VN/" + "/".join(segments)
        assert _answer(HTTP.request(method, base + path, headers=headers)) in expected, path

    generated()


@pytest.mark.parametrize("accept", [None, LIENTHONG_ACCEPT], ids=["xroad", "problem"])
@pytest.mark.parametrize("case", CASES)
def test_without_valid_credentials_every_path_gets_the_same_answer(mesh: Mesh, case: str, accept: str | None) -> None:
    """Existing and missing services, endpoints, methods, subsystems and metaservices: one answer, a 401/403 (as
    X-Road's 500 + X-Road-Error, PR-REST §4.6, to a client that does not ask for problem+json)."""
    headers, gateways = _credentials(mesh, case)
    headers = {k: v for k, v in headers.items() if k.lower() != "accept"}
    if accept is not None:
        headers["Accept"] = accept
    for gateway in gateways:
        base = mesh.gateways[gateway].url
        answers = {}
        for method in ("GET", "POST"):
            for path in [f"/r1/{s}{t}" for s in KNOWN for t in TAILS] + METAS + [person_path(mesh)]:
                answers[(method, path)] = _answer(HTTP.request(method, base + path, headers=headers))
        distinct = set(answers.values())
        assert len(distinct) == 1, {k: (v[0], v[2][:120]) for k, v in answers.items()}
        status, fields, content = next(iter(distinct))
        precise = orjson.loads(content)["status"]
        assert precise in (401, 403), content
        # problem+json when asked for, and always on the mesh hop (an assertion); otherwise X-Road's shape, where
        # authentication and home-gateway refusals, Server.* types, are a 500
        problem = accept is not None or "X-Lienthong-Assertion" in headers
        assert dict(fields)["content-type"].startswith("application/problem+json" if problem else "application/json")
        assert status == (precise if problem else 500), (status, content)
        assert dict(fields)["x-road-error"].startswith("Server."), fields
        _same_for_generated_paths(base, headers, distinct)
