"""End to end with every part real: the registry, three gateways with the full policy chain, the four connectors
over generated data, and Redis. Calls cross two gateways to each national connector and from one province to
another; the JWT and assertion attack cases (protocol §4) are refused where they arrive; a gateway killed with
kill -9 under load has metered exactly the successes its client saw; a changed audit record is caught.
"""

from __future__ import annotations

import base64
import json
import shutil
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import jwt
import orjson
import pytest
import redis
import yaml

from gateway.xroad_errors import XROAD_TYPES
from lienthong import keys, tokens
from lienthong.redis_connection import EmbeddedRedis, free_port, sync_client
from policies.meter_query import transactions
from tests.mesh_support import LIENTHONG_ACCEPT, MESH_TLS, Mesh, call_headers, client_token
from tests.ops_support import gateway_operator_headers
from tests.procs import Proc, lienthong

REPO = Path(__file__).resolve().parent.parent
HTTP = httpx.Client(timeout=15, verify=MESH_TLS)
NA = "VN/PROV/NGHEAN/civil-status"  # consumer at nghean, also the provider of births
HN = "VN/PROV/HANOI/justice"  # consumer at hanoi
GOV = "VN/GOV/BTP/justice"  # consumer at national (local calls)
LOAD = "VN/GOV/BTP/statistics"  # used only by the kill -9 test, so its meter count starts at zero
PURPOSE = "birth-registration"
CONNECTORS = {  # name -> (service id, hosting gateway, OpenAPI file, database file, (table, column) of a real key)
    "population": ("VN/GOV/BCA/population/persons", "national", "population.yaml", "population", ("persons", "id")),
    "insurance": ("VN/GOV/BHXH/insurance/insurance", "national", "insurance.yaml", "insurance",
                  ("insured", "si_number")),
    "business-registry": ("VN/GOV/BTC/business-registry/enterprises", "national", "business-registry.yaml",
                          "business", ("enterprises", "code")),
    "civil-status": ("VN/PROV/NGHEAN/civil-status/births", "nghean", "civil-status.yaml", "civil_status",
                     ("births", "id")),  # only births registered in Nghe An (040) are in its register
}  # fmt: skip
PATHS = {"population": "/persons/{}", "insurance": "/insured/{}", "business-registry": "/enterprises/{}",
         "civil-status": "/births/{}"}  # fmt: skip
POPULATION_FIELDS = ["id", "full_name"]


def _first(database: Path, table: str, column: str) -> str:
    where = " WHERE province_code = '040'" if table == "births" else ""
    with sqlite3.connect(database) as conn:
        row = conn.execute(f"SELECT {column} FROM {table}{where} ORDER BY {column} LIMIT 1").fetchone()  # noqa: S608
    assert row is not None, f"the generated {table} table has no usable row"
    return str(row[0])


@pytest.fixture(scope="module")
def e2e(tmp_path_factory: pytest.TempPathFactory, redis_server: EmbeddedRedis) -> Iterator[Mesh]:
    root = tmp_path_factory.mktemp("e2e")
    m = Mesh(root, root / "logs", policies="all", redis_url=redis_server.url.rsplit("/", 1)[0] + "/6")
    redis.Redis.from_url(m.redis_url).flushdb()
    connectors: list[Proc] = []
    try:
        data = root / "data"
        subprocess.run(lienthong("data", "generate", "--people", "1500", "--seed", "3", "--out", str(data)),
                       check=True, capture_output=True)  # fmt: skip
        for code in ("national", "hanoi", "nghean"):
            m.add_gateway(code)
        m.start_registry()
        ports: dict[str, int] = {}
        scheme = "https" if m.tls else "http"
        for name, (_, host, _, db, _) in CONNECTORS.items():
            keys_file = root / f"{host}-keys.json"
            keys_file.write_bytes(orjson.dumps([m.gateways[host].key.jwk]))
            ports[name] = free_port()
            argv = lienthong("connector", "serve", name, "--port", str(ports[name]), "--gateway", host,
                             "--database-url", f"sqlite:///{data / (db + '.sqlite')}", "--gateway-keys",
                             str(keys_file), "--log-level", "warning",
                             *m.connector_tls(name, CONNECTORS[name][0]))  # fmt: skip
            connectors.append(Proc(f"connector-{name}", argv, m.log_dir).start())
        for member, home in (
            ("VN/GOV/BCA", "national"),
            ("VN/GOV/BHXH", "national"),
            ("VN/GOV/BTC", "national"),
            ("VN/GOV/BTP", "national"),
            ("VN/PROV/NGHEAN", "nghean"),
            ("VN/PROV/HANOI", "hanoi"),
        ):
            m.add_member(member, home)  # fmt: skip
        for sub in ("VN/GOV/BCA/population", "VN/GOV/BHXH/insurance", "VN/GOV/BTC/business-registry", NA, HN, GOV,
                    LOAD):  # fmt: skip
            m.add_subsystem(sub)
        for client in (NA, HN, GOV, LOAD):
            m.add_client(client)
        m.ids = {}  # type: ignore[attr-defined]
        for name, (service, host, spec, db, (table, column)) in CONNECTORS.items():
            doc = yaml.safe_load((REPO / "openapi" / spec).read_text())
            m.add_service(service, host, f"{scheme}://127.0.0.1:{ports[name]}", openapi=doc)
            m.ids[name] = _first(data / f"{db}.sqlite", table, column)  # type: ignore[attr-defined]
            if host == "national":
                fields = POPULATION_FIELDS if name == "population" else None
                m.add_grant(f"g-na-{name}", NA, service, [PURPOSE], fields=fields)
        m.add_grant("g-hn-births", HN, CONNECTORS["civil-status"][0], [PURPOSE])
        m.add_grant("g-gov-persons", GOV, CONNECTORS["population"][0], [PURPOSE])
        m.add_grant("g-load-persons", LOAD, CONNECTORS["population"][0], [PURPOSE])
        m.publish()
        for (name, port), proc in zip(ports.items(), connectors, strict=True):
            host = CONNECTORS[name][1]
            m.gateway_cert(host)  # a connector over TLS answers its hosting gateway's certificate only
            proc.wait_http(f"{scheme}://127.0.0.1:{port}/healthz", timeout=60, verify=m.gateways[host].hop_verify)
        m.start_gateways({"national": {"--workers": "2"}, "hanoi": {}, "nghean": {}})
        yield m
    finally:
        m.stop()
        for proc in connectors:
            proc.stop()


def call(m: Mesh, home: str, client: str, name: str, **headers: str) -> httpx.Response:
    service = CONNECTORS[name][0]
    path = PATHS[name].format(m.ids[name])  # type: ignore[attr-defined]
    return HTTP.get(f"{m.gateways[home].url}/r1/{service}{path}", headers={**call_headers(m, client, home), **headers})


def refused(r: httpx.Response, status: int, code: str) -> None:
    """A refusal in problem+json (asked for, or the mesh hop): lienthong's precise status and code, and X-Road-Error
    the X-Road type of that code (PR-REST §4.3, docs/protocol.md §6)."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json;charset=utf-8", r.headers
    body = r.json()
    assert body["code"] == code and body["status"] == status, body
    assert r.headers["x-road-error"] == body["xroad_type"] == XROAD_TYPES[code], body


def refused_xroad(r: httpx.Response, status: int, code: str) -> None:
    """The same refusal to a client that does not ask for problem+json: X-Road's shape, 400 for a Client.* type and
    500 for a Server.* one, with lienthong's code and precise status in the body (PR-REST §4.6)."""
    xtype = XROAD_TYPES[code]
    assert r.status_code == (400 if xtype.startswith("Client.") else 500), r.text
    assert r.headers["content-type"] == "application/json;charset=utf-8", r.headers
    body = r.json()
    assert r.headers["x-road-error"] == body["type"] == xtype, body
    assert body["code"] == code and body["status"] == status, body
    assert body["detail"] == r.headers["x-road-request-id"], body


# -- calls ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["population", "insurance", "business-registry"])
def test_a_province_reaches_each_national_connector_over_two_gateways(e2e: Mesh, name: str) -> None:
    r = call(e2e, "nghean", NA, name, **{"X-Road-UserId": "can-bo-7", "X-Road-Issue": "HS-1"})
    assert r.status_code == 200, r.text
    assert "x-road-error" not in r.headers and r.headers["x-road-request-hash"]
    body = r.json()
    if name == "population":  # minimized at the hosting gateway to the grant's fields
        assert set(body) == set(POPULATION_FIELDS)


def test_a_province_calls_another_provinces_service_in_one_hop(e2e: Mesh) -> None:
    r = call(e2e, "hanoi", HN, "civil-status")
    assert r.status_code == 200, r.text
    assert r.json()["id"] == e2e.ids["civil-status"]  # type: ignore[attr-defined]


def test_no_data_is_the_providers_404_not_the_meshs(e2e: Mesh) -> None:
    service = CONNECTORS["population"][0]
    r = HTTP.get(
        f"{e2e.gateways['nghean'].url}/r1/{service}/persons/001099999999", headers=call_headers(e2e, NA, "nghean")
    )
    assert r.status_code == 404 and "x-road-error" not in r.headers


def test_ops_api_is_mounted(e2e: Mesh) -> None:
    gw = e2e.gateways["nghean"]
    r = HTTP.get(f"{gw.url}/ops/v1/health", headers=gateway_operator_headers(gw))
    assert HTTP.get(f"{gw.url}/ops/v1/health").status_code == 401  # no token, no answer
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json")


# -- attacks on the client token (protocol §4.1) -----------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _attack_tokens(m: Mesh) -> dict[str, tuple[str, str]]:
    """name -> (token, X-Road-Client)."""
    na = m.clients[NA]
    now = int(time.time())
    claims = {"iss": NA, "sub": NA, "aud": "nghean", "iat": now, "exp": now + 60}
    good = client_token(na, NA, "nghean")
    head, payload, sig = good.split(".")
    forged_payload = _b64(orjson.dumps({**claims, "sub": HN, "iss": HN}))
    public_x = keys.public_jwk(na.key)["x"]
    return {
        "alg none": (f"{_b64(orjson.dumps({'alg': 'none', 'kid': na.kid}))}.{_b64(orjson.dumps(claims))}.", NA),
        "HS256 with the public key as secret": (
            jwt.encode(claims, public_x.encode() * 2, algorithm="HS256", headers={"kid": na.kid}),
            NA,
        ),
        "expired": (tokens.sign(na.key, na.kid, {"iss": NA, "sub": NA, "aud": "nghean"}, now=now - 400), NA),
        "lifetime over 300 s": (tokens.sign(na.key, na.kid, {"iss": NA, "sub": NA, "aud": "nghean"}, lifetime=900), NA),
        "not yet valid": (tokens.sign(na.key, na.kid, {"iss": NA, "sub": NA, "aud": "nghean"}, now=now + 120), NA),
        "audience another gateway": (client_token(na, NA, "national"), NA),
        "unknown kid": (tokens.sign(na.key, "no-such-kid", {"iss": NA, "sub": NA, "aud": "nghean"}), NA),
        "X-Road-Client is not the subject": (good, HN),
        "another client's key claiming NA": (client_token(m.clients[HN], NA, "nghean"), NA),
        "payload changed after signing": (f"{head}.{forged_payload}.{sig}", HN),
        "signature stripped": (f"{head}.{payload}.", NA),
        "over 8 KiB": (client_token(na, NA, "nghean", pad="x" * 9000), NA),
        "not a JWT": ("hello", NA),
    }


def test_client_token_attacks_are_refused_with_401(e2e: Mesh) -> None:
    url = f"{e2e.gateways['nghean'].url}/r1/{CONNECTORS['population'][0]}/persons/{e2e.ids['population']}"  # type: ignore[attr-defined]
    failures = []
    for name, (token, client) in _attack_tokens(e2e).items():
        headers = {"Authorization": f"Bearer {token}", "X-Road-Client": client, "X-Purpose": PURPOSE}
        for check, accept in ((refused, {"Accept": LIENTHONG_ACCEPT}), (refused_xroad, {})):
            r = HTTP.get(url, headers={**headers, **accept})
            try:
                check(r, 401, "invalid-token")
            except AssertionError:
                failures.append(f"{name} ({check.__name__}): {r.status_code} {r.headers} {r.text[:200]}")
    assert not failures, failures


def test_a_revoked_client_key_stops_working(e2e: Mesh) -> None:
    pair = e2e.add_client(HN, "ES256")  # a second key of hanoi's consumer, ES256 this time
    e2e.wait_version(e2e.publish())
    token = client_token(pair, HN, "hanoi")
    url = f"{e2e.gateways['hanoi'].url}/r1/{CONNECTORS['civil-status'][0]}/births/{e2e.ids['civil-status']}"  # type: ignore[attr-defined]
    headers = {
        "Authorization": f"Bearer {token}",
        "X-Road-Client": HN,
        "X-Purpose": PURPOSE,
        "Accept": LIENTHONG_ACCEPT,
    }
    assert HTTP.get(url, headers=headers).status_code == 200
    e2e._admin().revoke_client_key(HN, pair.kid)
    code = next(iter(e2e.gateways))
    version = int(e2e._admin().snapshot(gateway=code).headers["etag"].strip('W/"'))
    e2e.wait_version(version)
    refused(HTTP.get(url, headers=headers), 401, "invalid-token")


# -- attacks on the gateway assertion (protocol §4.2) -------------------------------------------------------------


def _assertion(m: Mesh, signer: str, **over: Any) -> str:
    gw = m.gateways[signer]
    claims = {"iss": signer, "aud": "national", "sub": NA, "svc": CONNECTORS["population"][0], "purpose": PURPOSE,
              **over}  # fmt: skip
    lifetime = claims.pop("lifetime", 10)
    return tokens.sign(gw.key.key, gw.key.kid, claims, lifetime=lifetime)


def test_gateway_assertion_attacks_are_refused(e2e: Mesh) -> None:
    url = f"{e2e.gateways['national'].url}/r1/{CONNECTORS['population'][0]}/persons/{e2e.ids['population']}"  # type: ignore[attr-defined]

    hops = {code: e2e.gateways[code].hop_client(timeout=15) for code in ("nghean", "hanoi")}

    def send(token: str, hop: str = "nghean") -> httpx.Response:
        """Over the mesh hop's mutual TLS with `hop`'s certificate (the assertion checks are what is tested here), on
        one kept-alive connection per hop: the replay cache is each worker's own."""
        return hops[hop].get(url, headers={"X-Lienthong-Assertion": token})

    good = _assertion(e2e, "nghean")
    assert send(good).status_code == 200
    refused(send(good), 401, "invalid-assertion")  # replayed
    refused(send(_assertion(e2e, "hanoi"), "hanoi"), 401, "invalid-assertion")  # hanoi is not NA's home gateway
    refused(send(_assertion(e2e, "nghean", aud="hanoi")), 401, "invalid-assertion")
    refused(send(_assertion(e2e, "nghean", lifetime=120)), 401, "invalid-assertion")
    na = e2e.clients[NA]  # a client key is not a gateway key
    forged = tokens.sign(
        na.key, na.kid, {"iss": "nghean", "aud": "national", "sub": NA, "svc": "x", "purpose": PURPOSE}
    )
    refused(send(forged), 401, "invalid-assertion")
    # a genuine assertion for a purpose the grant does not allow: the hosting gateway checks the grant itself
    refused(send(_assertion(e2e, "nghean", purpose="marketing")), 403, "access-denied")
    # the hosting gateway never forwards again: hanoi does not host population
    token = _assertion(e2e, "nghean", aud="hanoi")
    r = hops["nghean"].get(url.replace(e2e.gateways["national"].url, e2e.gateways["hanoi"].url),
                           headers={"X-Lienthong-Assertion": token})  # fmt: skip
    refused(r, 404, "unknown-service")
    for client in hops.values():
        client.close()


# -- audit --------------------------------------------------------------------------------------------------------


def _verify(directory: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(lienthong("audit", "verify", "--dir", str(directory)), capture_output=True, text=True)


def test_audit_verification_catches_a_changed_record(e2e: Mesh, tmp_path: Path) -> None:
    assert call(e2e, "nghean", NA, "population").status_code == 200
    audit = e2e.gateways["nghean"].data_dir / "audit"
    deadline = time.monotonic() + 5
    while not any(p.stat().st_size for p in audit.glob("*") if p.is_file()):
        assert time.monotonic() < deadline, "no audit record was written"
        time.sleep(0.05)
    copy = tmp_path / "audit"
    shutil.copytree(audit, copy)  # tamper with a copy: the live gateway keeps appending to the original
    intact = _verify(copy)
    assert intact.returncode in (0, 2), intact.stdout + intact.stderr
    segment = next(p for p in sorted(copy.iterdir()) if p.is_file() and p.stat().st_size and p.suffix != ".lock")
    lines = segment.read_bytes().split(b"\n")
    record = json.loads(lines[0])
    record["status"] = 404 if record.get("status") != 404 else 200  # hide what was answered
    lines[0] = json.dumps(record, separators=(",", ":")).encode()
    segment.write_bytes(b"\n".join(lines))
    tampered = _verify(copy)
    assert tampered.returncode == 1, tampered.stdout
    assert "TAMPERED" in tampered.stdout and "changed" in tampered.stdout


# -- kill -9 under load -------------------------------------------------------------------------------------------


def _metered_successes(m: Mesh, consumer: str) -> int:
    now = datetime.now(UTC)
    result = transactions(sync_client(m.redis_url), now - timedelta(hours=1), now + timedelta(hours=1),
                          ["consumer", "outcome"])  # fmt: skip
    return sum(g["count"] for g in result["groups"] if g["consumer"] == consumer and g["outcome"] == "found")


def test_kill_9_under_load_meters_exactly_the_successes_the_client_saw(e2e: Mesh) -> None:
    """Every success a client received is metered after a kill -9, and nothing else but the calls in flight.

    The meter spools a call just before its reply is sent (docs/policies.md), so no received response can go
    uncounted; a call killed between spooling and sending is counted though its client saw the connection drop.
    Each load thread has at most one call in flight at the kill, hence the bound of one extra count per thread."""
    assert _metered_successes(e2e, LOAD) == 0
    service = CONNECTORS["population"][0]
    url = f"{e2e.gateways['national'].url}/r1/{service}/persons/{e2e.ids['population']}"  # type: ignore[attr-defined]
    successes = [0] * 3
    stop = threading.Event()

    def load(i: int) -> None:
        with httpx.Client(timeout=5, verify=MESH_TLS) as client:
            while not stop.is_set():
                try:
                    r = client.get(url, headers=call_headers(e2e, LOAD, "national"))
                except httpx.HTTPError:
                    time.sleep(0.01)
                    continue
                if r.status_code == 200:
                    successes[i] += 1

    threads = [threading.Thread(target=load, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    time.sleep(1.5)
    national = e2e.gateways["national"]
    assert national.proc is not None
    national.proc.kill9()  # the whole process group: the serving parent and both workers
    time.sleep(0.3)
    stop.set()
    for t in threads:
        t.join()
    seen = sum(successes)
    assert seen > 0
    e2e.start_gateway("national", {"--workers": "2"})  # the new workers replay the dead ones' spools
    deadline = time.monotonic() + 10
    while (metered := _metered_successes(e2e, LOAD)) < seen and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)  # replayed spools may still be landing: the bound must hold once they have
    metered = _metered_successes(e2e, LOAD)
    assert seen <= metered <= seen + len(threads), f"client saw {seen} successes, the meter counted {metered}"
