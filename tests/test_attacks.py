"""Attacks on a live mesh (issue 7) that the other test files do not already cover: each gets the right 4xx, leaks
no data and no internal detail, the audit trail records the refusal, and the gateway keeps serving others.

Already covered elsewhere, so not repeated here (see docs/faults.md for the full table):
- token attacks (alg=none, HS256 with the public key, wrong aud, expired, nbf in the future, over-long lifetime,
  unknown kid, another client's key, forged X-Road-Client, > 8 KiB): test_gateway_e2e.py
  test_client_token_attacks_are_refused_with_401 and tests/test_policy_authn.py; revoked key:
  test_gateway_e2e.py test_a_revoked_client_key_stops_working;
- purpose not in the grant, endpoint outside the grant: test_gateway.py test_grant_and_token_checks_run_on_the_path;
- `..`, `%2e%2e`, `//`, `%2F` paths: test_gateway.py test_path_hygiene (status and code);
- forged, replayed, wrong-audience and over-long assertions, a province speaking for another, a second hop:
  test_gateway_e2e.py test_gateway_assertion_attacks_are_refused; connector without or with a bad assertion:
  test_connector_sdk.py; a snapshot with a bad signature or an older version: test_gateway_units.py (in process).

The mesh is bench.chaos_mesh's (the demo mesh as real processes, TLS on every link), shared with test_chaos and
test_fuzz_schemathesis. An attack on the HTTP layer is made inside TLS, as an attacker with a TLS client would; the
attacks on the connection itself are made both ways: plain TCP connections that never handshake, and handshaken
connections that send their HTTP request slowly.
"""

from __future__ import annotations

import base64
import contextlib
import resource
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import jwt
import orjson
import pytest

from bench.chaos_mesh import ChaosMesh, shared
from gateway.xroad_errors import XROAD_TYPES, xroad_status
from lienthong import keys, pki, tokens
from lienthong.cli.mesh_layout import HANOI_PORTAL, INSURANCE, MOJ, NGHEAN_CIVIL, POPULATION
from policies.audit_log import iter_records
from tests.mesh_support import LIENTHONG_ACCEPT

INTERNAL = ("Traceback", 'File "', ".py", "/work/", "/tmp/", "sqlite", "Exception", "redis")


@pytest.fixture(scope="module")
def cm(tmp_path_factory: pytest.TempPathFactory) -> ChaosMesh:
    return shared(tmp_path_factory.mktemp("chaos-mesh"))


_HTTP: dict[int, httpx.Client] = {}


def http(cm: ChaosMesh) -> httpx.Client:
    """One kept-alive HTTPS client per mesh, verifying the gateways with the mesh CA (no client certificate)."""
    if id(cm) not in _HTTP:
        _HTTP[id(cm)] = httpx.Client(timeout=15, verify=cm.mesh.verify)
    return _HTTP[id(cm)]


def _tls(cm: ChaosMesh) -> ssl.SSLContext:
    return pki.client_context(cm.ca)


def _connect(cm: ChaosMesh, port: int, timeout: float = 10.0) -> ssl.SSLSocket:
    """A raw TLS connection to a gateway port, handshaken: what follows is the HTTP layer's bytes, unparsed."""
    return _tls(cm).wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=timeout))


def _key(cm: ChaosMesh, subsystem: str) -> keys.PrivateKey:
    return keys.load_private(cm.key_file(subsystem))


def _token(cm: ChaosMesh, subsystem: str, aud: str, **claims: Any) -> str:
    return tokens.sign(_key(cm, subsystem), cm.mesh.kids[subsystem],
                       {"iss": subsystem, "sub": subsystem, "aud": aud, **claims})  # fmt: skip


def _headers(cm: ChaosMesh, subsystem: str, home: str, purpose: str = "birth-registration", **extra: str) -> dict[
        str, str]:  # fmt: skip
    """A client's call headers, asking for problem+json as lienthong's own clients do (protocol §6): a refusal
    then comes at lienthong's precise status, which is what these attacks check."""
    return {"Authorization": f"Bearer {_token(cm, subsystem, home)}", "X-Road-Client": subsystem,
            "X-Purpose": purpose, "X-Road-Id": uuid.uuid4().hex, "Accept": LIENTHONG_ACCEPT, **extra}  # fmt: skip


def _url(cm: ChaosMesh, home: str, path: str) -> str:
    return f"{cm.mesh.gateway_urls[home]}{path}"


def _person(cm: ChaosMesh) -> str:
    return f"/r1/{POPULATION}/persons/{cm.ids['population'][0]}"


def _audited(cm: ChaosMesh, gateway: str, txid: str, timeout: float = 5.0) -> list[dict[str, Any]]:
    directory = cm.gateway_dir(gateway) / "audit"
    deadline = time.monotonic() + timeout
    while True:
        found = [r for _, r in iter_records(directory) if r.get("transaction_id") == txid]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def _media_type(r: httpx.Response) -> str:
    return r.headers["content-type"].split(";", 1)[0].strip()


def refused(cm: ChaosMesh, r: httpx.Response, status: int, code: str, gateway: str, secret: str = "") -> None:
    """The right 4xx as a problem (the client asked for problem+json), no data, no internal detail, and one audit
    record of the refusal. X-Road-Error is the X-Road type of the code (PR-REST 1.0.4 §4.3, §4.6)."""
    assert r.status_code == status, r.text[:500]
    assert _media_type(r) == "application/problem+json", r.headers["content-type"]
    body = r.json()
    assert body["code"] == code and body["status"] == status, body
    assert r.headers["x-road-error"] == XROAD_TYPES[code] == body["xroad_type"], (r.headers["x-road-error"], body)
    for word in INTERNAL:
        assert word not in r.text, f"internal detail {word!r} in {r.text[:300]}"
    if secret:
        assert secret not in r.text
    records = _audited(cm, gateway, r.headers["x-road-id"])
    assert len(records) == 1, f"{len(records)} audit records of the refused call {r.headers['x-road-id']}"
    assert records[0]["status"] == status and records[0]["error_code"] == code


def still_serving(cm: ChaosMesh, home: str = "hanoi") -> None:
    client = HANOI_PORTAL if home == "hanoi" else MOJ
    r = http(cm).get(_url(cm, home, _person(cm)), headers=_headers(cm, client, home))
    assert r.status_code == 200, r.text


# -- tokens ---------------------------------------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def test_token_refusals_are_audited(cm: ChaosMesh) -> None:
    """A sample of the token attacks test_gateway_e2e covers, now also checking the audit trail and leaks."""
    kid = cm.mesh.kids[NGHEAN_CIVIL]
    now = int(time.time())
    claims = {"iss": NGHEAN_CIVIL, "sub": NGHEAN_CIVIL, "aud": "nghean", "iat": now, "exp": now + 60}
    public_x = keys.public_jwk(_key(cm, NGHEAN_CIVIL))["x"]
    cases = {
        "alg none": f"{_b64(orjson.dumps({'alg': 'none', 'kid': kid}))}.{_b64(orjson.dumps(claims))}.",
        "HS256 with the public key": jwt.encode(claims, public_x.encode(), algorithm="HS256", headers={"kid": kid}),
        "wrong aud": _token(cm, NGHEAN_CIVIL, "hanoi"),
        "expired": tokens.sign(
            _key(cm, NGHEAN_CIVIL), kid, {"iss": NGHEAN_CIVIL, "sub": NGHEAN_CIVIL, "aud": "nghean"}, now=now - 400
        ),
        "nbf in the future": _token(cm, NGHEAN_CIVIL, "nghean", nbf=now + 120),
        "unknown kid": tokens.sign(_key(cm, NGHEAN_CIVIL), "no-such-kid", claims),
    }
    for name, token in cases.items():
        txid = uuid.uuid4().hex
        h = {"Authorization": f"Bearer {token}", "X-Road-Client": NGHEAN_CIVIL, "X-Purpose": "birth-registration",
             "X-Road-Id": txid, "Accept": LIENTHONG_ACCEPT}  # fmt: skip
        r = http(cm).get(_url(cm, "nghean", _person(cm)), headers=h)
        try:
            refused(cm, r, 401, "invalid-token", "nghean")
        except AssertionError as exc:
            raise AssertionError(f"{name}: {exc}") from exc


def test_another_clients_token_with_a_forged_x_road_client(cm: ChaosMesh) -> None:
    h = _headers(cm, HANOI_PORTAL, "nghean")
    h["X-Road-Client"] = NGHEAN_CIVIL  # Ha Noi's valid token, claiming to be Nghe An
    refused(cm, http(cm).get(_url(cm, "nghean", _person(cm)), headers=h), 401, "invalid-token", "nghean")


def test_a_one_megabyte_token_is_refused_and_the_gateway_keeps_serving(cm: ChaosMesh) -> None:
    token = _token(cm, NGHEAN_CIVIL, "nghean", pad="x" * 1_048_576)
    h = _headers(cm, NGHEAN_CIVIL, "nghean")
    h["Authorization"] = f"Bearer {token}"
    try:
        r = http(cm).get(_url(cm, "nghean", _person(cm)), headers=h)
    except httpx.HTTPError:
        r = None  # the server may cut a 1 MB header block before any answer: nothing leaked, nothing served
    if r is not None:
        assert 400 <= r.status_code < 500, r.text[:300]
        assert cm.ids["population"][0] not in r.text
        if r.status_code == 401:
            refused(cm, r, 401, "invalid-token", "nghean")
    still_serving(cm, "national")
    r2 = http(cm).get(_url(cm, "nghean", _person(cm)), headers=_headers(cm, NGHEAN_CIVIL, "nghean"))
    assert r2.status_code == 200


def test_a_real_clients_token_for_a_service_without_a_grant(cm: ChaosMesh) -> None:
    # the Ministry of Justice has grants for population and business, none for insurance
    path = f"/r1/{INSURANCE}/insured/{cm.ids['insurance'][0]}"
    r = http(cm).get(_url(cm, "national", path), headers=_headers(cm, MOJ, "national"))
    refused(cm, r, 403, "access-denied", "national", secret=cm.ids["insurance"][0] + '"')


# -- grants -----------------------------------------------------------------------------------------------------------


def test_purpose_and_endpoint_refusals_are_audited(cm: ChaosMesh) -> None:
    r = http(cm).get(_url(cm, "nghean", _person(cm)), headers=_headers(cm, NGHEAN_CIVIL, "nghean", "marketing"))
    refused(cm, r, 403, "access-denied", "nghean")
    # Ha Noi's insurance grant is for birth registration only; identity verification is not in it
    path = f"/r1/{INSURANCE}/insured/{cm.ids['insurance'][0]}"
    r = http(cm).get(_url(cm, "hanoi", path), headers=_headers(cm, HANOI_PORTAL, "hanoi", "identity-verification"))
    refused(cm, r, 403, "access-denied", "hanoi")


@pytest.mark.parametrize("trick", ["/persons/../persons/{id}", "/persons/%2e%2e/{id}", "/persons//{id}",
                                   "/persons%2F{id}", "/persons/%2E/{id}"])  # fmt: skip
def test_path_tricks_are_refused_and_audited(cm: ChaosMesh, trick: str) -> None:
    """test_gateway.py checks the status; this checks the audit trail keeps the refusal too."""
    path = f"/r1/{POPULATION}" + trick.format(id=cm.ids["population"][0])
    txid = uuid.uuid4().hex
    h = _headers(cm, NGHEAN_CIVIL, "nghean")
    h["X-Road-Id"] = txid
    port = int(cm.mesh.gateway_urls["nghean"].rsplit(":", 1)[1])
    raw = _raw_request(cm, port, f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" +
                       "".join(f"{k}: {v}\r\n" for k, v in h.items()) + "\r\n")  # fmt: skip
    r = _parse_response(raw)
    refused(cm, r, 400, "invalid-path", "nghean")


@pytest.mark.parametrize("header", ["X-HTTP-Method-Override", "X-Method-Override", "X-HTTP-Method"])
def test_a_method_override_header_changes_nothing(cm: ChaosMesh, header: str) -> None:
    # a GET that asks to be a DELETE stays a GET (and the grant allows GET)
    h = _headers(cm, NGHEAN_CIVIL, "nghean", **{header: "DELETE"})
    r = http(cm).get(_url(cm, "nghean", _person(cm)), headers=h)
    assert r.status_code == 200
    # a POST that asks to be a GET is routed as the POST it is: no such endpoint
    h = _headers(cm, NGHEAN_CIVIL, "nghean", **{header: "GET"})
    refused(cm, http(cm).post(_url(cm, "nghean", _person(cm)), headers=h), 404, "unknown-endpoint", "nghean")


def _full_insured(cm: ChaosMesh) -> dict[str, Any]:
    path = f"/r1/{INSURANCE}/insured/{cm.ids['insurance'][0]}"
    r = http(cm).get(_url(cm, "nghean", path), headers=_headers(cm, NGHEAN_CIVIL, "nghean"))  # grant: every field
    assert r.status_code == 200, r.text
    doc: dict[str, Any] = r.json()
    return doc


@pytest.mark.parametrize(
    "extra",
    [{"Accept": "application/xml"}, {"Accept": "text/csv"}, {"Accept": "*/*;q=0, text/html"},
     {"Accept": "application/json;profile=full"}, {"Accept-Encoding": "gzip, br, deflate"},
     {"Accept": "application/problem+json"}, {"Accept-Charset": "utf-16"}],
)  # fmt: skip
def test_field_minimization_survives_content_negotiation(cm: ChaosMesh, extra: dict[str, str]) -> None:
    full = _full_insured(cm)
    hidden = {k: v for k, v in full.items() if k not in ("si_number", "person_id", "full_name")}
    assert hidden, "the insured record should have fields Ha Noi may not see"
    for query in ("", "?format=xml", "?$select=*"):
        path = f"/r1/{INSURANCE}/insured/{cm.ids['insurance'][0]}{query}"
        r = http(cm).get(_url(cm, "hanoi", path), headers=_headers(cm, HANOI_PORTAL, "hanoi", **extra))
        if r.status_code == 200:
            assert r.headers["content-type"].startswith("application/json")
            assert set(r.json()) <= {"si_number", "person_id", "full_name"}, r.text
        else:
            assert r.status_code < 600 and r.headers["content-type"] == "application/problem+json", r.text
        for name, value in hidden.items():
            if isinstance(value, str) and len(value) >= 4:
                assert value not in r.text, f"{name} leaked with {extra} {query}"


# -- the mesh -------------------------------------------------------------------------------------------------------


def test_a_direct_call_to_a_connector_with_a_client_token_is_refused(cm: ChaosMesh) -> None:
    """A client system going round its gateway: without a certificate the connector's TLS refuses the handshake;
    with its own (a real client system's) certificate it is not the hosting gateway; and even over the hosting
    gateway's certificate (stolen, say) a client token is no assertion. No data in any answer."""
    person = cm.ids["population"][0]
    url = f"{cm.mesh.connector_urls['population']}/persons/{person}"
    paths = cm.mesh.config.paths
    with httpx.Client(timeout=15, verify=_tls(cm)) as bare, pytest.raises(httpx.TransportError):
        bare.get(url)  # the connector requires a client certificate: no HTTP at all
    token = _token(cm, MOJ, "national")
    for holder, expected in ((paths.client_tls(MOJ), {403}), (paths.gateway_tls("national"), {401})):
        with httpx.Client(timeout=15, verify=pki.client_context(cm.ca, pki.CertFiles(holder))) as client:
            for headers in ({}, {"Authorization": f"Bearer {token}", "X-Road-Client": MOJ},
                            {"X-Lienthong-Assertion": token}):  # fmt: skip
                r = client.get(url, headers=headers)
                assert r.status_code in expected, (holder.name, r.text)
                assert person + '"' not in r.text and r.headers["content-type"].startswith("application/problem+json")


# -- load -------------------------------------------------------------------------------------------------------------


def _raw_request(cm: ChaosMesh, port: int, request: str | bytes, timeout: float = 10.0) -> bytes:
    """`request`'s bytes as they are, inside TLS, and every byte the gateway answers until it closes."""
    with _connect(cm, port, timeout) as s:
        s.sendall(request.encode("latin-1") if isinstance(request, str) else request)
        chunks = []
        try:
            while chunk := s.recv(65536):
                chunks.append(chunk)
        except (TimeoutError, ConnectionResetError, ssl.SSLError):  # a cut connection (or TLS alert) ends it too
            pass
    return b"".join(chunks)


def _parse_response(raw: bytes) -> httpx.Response:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = [(name, value) for name, _, value in (line.partition(": ") for line in lines[1:] if ": " in line)]
    return httpx.Response(status, headers=headers, content=body)


def _read_answer(s: ssl.SSLSocket, answer: bytes = b"") -> bytes:
    """`answer` completed to a whole response (head and its Content-Length of body) from `s`, or what came."""
    with contextlib.suppress(OSError):
        while b"\r\n\r\n" not in answer and (more := s.recv(65536)):
            answer += more
        head, _, body = answer.partition(b"\r\n\r\n")
        lengths = [
            line.split(b":", 1)[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")
        ]
        want = int(lengths[0]) if lengths else 0
        while len(body) < want and (more := s.recv(65536)):
            body += more
        answer = head + b"\r\n\r\n" + body
    return answer


def xroad_refused(r: httpx.Response, status: int, code: str) -> None:
    """A refusal to a client that named no Accept, in X-Road's shape (PR-REST 1.0.4 §4.3, §4.6): X-Road-Error the
    X-Road type, 400 for Client.* and 500 for Server.*, a JSON body with `type`, and lienthong's code and precise
    status kept in the body."""
    xtype = XROAD_TYPES[code]
    assert r.status_code == xroad_status(xtype), r.text[:500]
    assert r.headers["x-road-error"] == xtype
    assert _media_type(r) == "application/json", r.headers["content-type"]
    body = r.json()
    assert (body["type"], body["code"], body["status"]) == (xtype, code, status), body


def _port(cm: ChaosMesh, code: str) -> int:
    return int(cm.mesh.gateway_urls[code].rsplit(":", 1)[1])


def test_slow_loris_headers_do_not_starve_others(cm: ChaosMesh) -> None:
    """Handshaken TLS connections whose HTTP header block never ends: the HTTP layer bounds them as before."""
    socks = []
    try:
        for _ in range(300):
            s = _connect(cm, _port(cm, "hanoi"), timeout=5)
            s.sendall(b"GET /r1/listClients HTTP/1.1\r\nHost: x\r\n")
            socks.append(s)
        for _ in range(3):  # keep dribbling header bytes, as slow-loris does
            for s in socks:
                try:
                    s.sendall(b"X-a: b\r\n")
                except OSError:
                    pass
            still_serving(cm, "hanoi")
            time.sleep(0.3)
    finally:
        for s in socks:
            s.close()
    still_serving(cm, "hanoi")


def test_plain_http_on_the_tls_port_is_told_to_use_https(cm: ChaosMesh) -> None:
    """A real client's real call sent in clear, and junk sent in clear: a 400 naming https (or a cut connection),
    never data, and the gateway keeps serving over TLS."""
    h = _headers(cm, HANOI_PORTAL, "hanoi")
    call = f"GET {_person(cm)} HTTP/1.1\r\nHost: x\r\n" + "".join(f"{k}: {v}\r\n" for k, v in h.items()) + "\r\n"
    for request in (call.encode(), b"\x00\x01\x02\xff\r\n\r\n", b"GET / HTTP/9.9\r\n\r\n"):
        with socket.create_connection(("127.0.0.1", _port(cm, "hanoi")), timeout=30) as s:
            s.sendall(request)
            raw = b""
            with contextlib.suppress(OSError):
                while more := s.recv(65536):
                    raw += more
        assert cm.ids["population"][0].encode() not in raw
        if request is not call.encode() and not raw:
            continue  # junk may be cut without an answer
        assert raw.startswith(b"HTTP/1.1 400 "), raw[:300]
        assert b"https://" in raw, raw[:300]
    still_serving(cm, "hanoi")


def test_half_started_handshakes_are_closed(cm: ChaosMesh) -> None:
    """Connections that send the start of a ClientHello and then nothing: the handshake never ends, the gateway
    keeps serving and closes each of them (its handshake deadline)."""
    socks = []
    try:
        for _ in range(200):
            s = socket.create_connection(("127.0.0.1", _port(cm, "hanoi")), timeout=5)
            s.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")  # a record header promising 512 bytes
            socks.append(s)
        still_serving(cm, "hanoi")
        deadline = time.monotonic() + 60  # only to catch a gateway that never lets go
        assert all(_closed_by_peer(s, deadline) for s in socks), "a half handshake was held open"
    finally:
        for s in socks:
            s.close()
    still_serving(cm, "hanoi")


@pytest.fixture
def many_fds() -> Iterator[int]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = min(hard, 10_500)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), hard))
    yield max(soft, wanted)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _closed_by_peer(s: socket.socket, deadline: float) -> bool:
    """Whether the other end closes `s` (EOF or reset) before `deadline` (time.monotonic())."""
    while (left := deadline - time.monotonic()) > 0:
        s.settimeout(left)
        try:
            if s.recv(4096) == b"":
                return True
        except TimeoutError:
            return False
        except OSError:
            return True
    return False


def test_ten_thousand_idle_connections_that_never_handshake(cm: ChaosMesh, many_fds: int) -> None:
    """Under TLS the cheapest connection to hold is a TCP one that never starts its handshake: ten thousand of them
    do not stop the gateway serving a real client, and the gateway closes each (its handshake deadline, 10 s)."""
    count = min(10_000, many_fds - 300)  # the fd limit of this machine decides; 20,000 here
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            try:
                socks.append(socket.create_connection(("127.0.0.1", _port(cm, "hanoi")), timeout=5))
            except OSError:
                break  # the gateway's backlog or fd limit: it refuses, it does not fall over
        assert len(socks) >= min(count, 2000), f"only {len(socks)} connections opened"
        still_serving(cm, "hanoi")
        deadline = time.monotonic() + 60  # only to catch a gateway that never lets go
        assert all(_closed_by_peer(s, deadline) for s in socks[:: max(1, len(socks) // 50)]), "held open"
    finally:
        for s in socks:
            s.close()
    still_serving(cm, "hanoi")


def test_a_100_mb_body_is_cut_at_the_limit(cm: ChaosMesh) -> None:
    """Streamed with and without Content-Length; the gateway answers 413 body-too-large long before 100 MB arrived:
    as problem+json to a client asking for it, in X-Road's shape (400 Client.BadRequest, PR-REST 1.0.4 §4.6) to
    one naming no Accept. The audit trail keeps the precise 413 either way."""
    path = f"/r1/{POPULATION}/persons/{cm.ids['population'][0]}"
    for framing, accept in (("length", True), ("chunked", False)):
        h = _headers(cm, MOJ, "national")
        if not accept:
            del h["Accept"]
        head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in h.items())
        head += "Content-Length: 104857600\r\n\r\n" if framing == "length" else "Transfer-Encoding: chunked\r\n\r\n"
        sent = 0
        answer = b""
        with _connect(cm, _port(cm, "national")) as s:
            s.sendall(head.encode())
            chunk = b"x" * 65536
            s.setblocking(False)
            while sent < 100 * 1024 * 1024:
                try:
                    answer += s.recv(65536)
                    if answer:
                        break
                except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):  # nothing to read yet
                    pass
                except OSError:
                    break
                data = chunk if framing == "length" else b"10000\r\n" + chunk + b"\r\n"
                try:
                    sent += s.send(data)
                except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):  # the gateway reads no faster
                    time.sleep(0.001)
                except OSError:
                    break
            s.setblocking(True)
            s.settimeout(5)
            answer = _read_answer(s, answer)
        assert sent < 20 * 1024 * 1024, f"{framing}: {sent} bytes went in before the gateway answered"
        r = _parse_response(answer)
        if accept:
            refused(cm, r, 413, "body-too-large", "national")
        else:
            xroad_refused(r, 413, "body-too-large")
            records = _audited(cm, "national", r.headers["x-road-id"])  # the refusal is on the audit trail too
            assert [(x["status"], x["error_code"]) for x in records] == [(413, "body-too-large")]
    still_serving(cm, "national")


def test_an_oversized_body_on_a_percent_encoded_r1_path_is_audited(cm: ChaosMesh) -> None:
    """`/%721/` is `/r1/` spelled otherwise: its 413 must reach the audit trail as the plain spelling's does."""
    path = f"/%721/{POPULATION}/persons/{cm.ids['population'][0]}"
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 104857600\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in _headers(cm, MOJ, "national").items()) + "\r\n"
    with _connect(cm, _port(cm, "national")) as s:
        s.sendall(head.encode())
        answer = _read_answer(s)
    refused(cm, _parse_response(answer), 413, "body-too-large", "national")  # one audit record, 413 body-too-large


def test_a_thousand_headers(cm: ChaosMesh) -> None:
    h = _headers(cm, HANOI_PORTAL, "hanoi")
    extra = "".join(f"X-Junk-{i}: {i}\r\n" for i in range(1000))
    req = f"GET {_person(cm)} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + extra
    req += "".join(f"{k}: {v}\r\n" for k, v in h.items()) + "\r\n"
    raw = _raw_request(cm, _port(cm, "hanoi"), req)
    if raw:  # an answer, if any, is a 4xx; cutting the connection is fine too
        status = int(raw.split(b" ", 2)[1])
        assert 400 <= status < 500, raw[:300]
        assert cm.ids["population"][0].encode() + b'"' not in raw
    still_serving(cm, "hanoi")


@pytest.mark.parametrize(
    "junk",
    [b"\x00\x01\x02\xff\r\n\r\n", b"GET\r\n\r\n", b"GET / HTTP/9.9\r\n\r\n", b"GET /r1/x HTTP/1.1\r\nHost x\r\n\r\n",
     b"POST /r1/x HTTP/1.1\r\nContent-Length: -5\r\n\r\n", b"GET /r1/\xc3\x28 HTTP/1.1\r\nHost: x\r\n\r\n",
     # an unreadable chunked body: the gateway must still answer 4xx
     b"GET /r1/x HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\nzz\r\n",
     b"GET /r1/x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
     b"POST /r1/x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"],
)  # fmt: skip
def test_malformed_http(cm: ChaosMesh, junk: bytes) -> None:
    """Junk with no Accept: any answer is a refusal in X-Road's shape (PR-REST 1.0.4 §4.6: 400 for Client.*, 500 for
    Server.*, X-Road-Error the type) whose lienthong status is a 4xx: the client's fault, never a crash. (A chunked
    body on /r1/x may be refused for the unknown service before it is read: 500 Server.ServerProxy.UnknownService,
    lienthong's 404.)"""
    raw = _raw_request(cm, _port(cm, "hanoi"), junk, timeout=3)
    if raw.startswith(b"HTTP/"):
        assert b"Traceback" not in raw
        r = _parse_response(raw)
        xtype = r.headers.get("x-road-error", "")
        if xtype:  # a refusal by the gateway's own renderer
            assert r.status_code == xroad_status(xtype), raw[:300]
            body = r.json()
            assert body["type"] == xtype and body["code"] and 400 <= body["status"] < 500, body
        else:  # the HTTP layer's own answer, before any request existed
            assert 400 <= r.status_code < 500, raw[:300]
    still_serving(cm, "hanoi")


def test_the_gateway_serves_others_while_attacked(cm: ChaosMesh) -> None:
    """Handshaken TLS connections holding a slow body open while a stream of normal calls keeps succeeding."""
    stop = threading.Event()
    statuses: list[int] = []

    def normal() -> None:
        while not stop.is_set():
            statuses.append(http(cm).get(_url(cm, "hanoi", _person(cm)), headers=_headers(cm, HANOI_PORTAL, "hanoi"))
                            .status_code)  # fmt: skip

    t = threading.Thread(target=normal)
    socks = []
    t.start()
    try:
        for _ in range(200):
            s = _connect(cm, _port(cm, "hanoi"), timeout=5)
            s.sendall(b"POST /r1/x HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\nxx")
            socks.append(s)
        time.sleep(1.0)
    finally:
        stop.set()
        t.join(30)
        for s in socks:
            s.close()
    assert statuses and set(statuses) == {200}, statuses
