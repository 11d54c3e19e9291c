"""What a gateway authorizes is exactly what the service behind it routes (issue 13, critical finding 1).

A differential property test over a live mesh: two real gateway processes (the hosting "national" and the province
"hanoi", one hop away) and, as the connector, a recording upstream that keeps the request target exactly as it
arrived on its socket. The consumers' grants allow only `GET /persons/{id}/residence`; the service also has
`GET /persons/{id}`, which holds the data the grant does not cover. Hypothesis generates odd request paths (raw and
percent-encoded `#`, `?`, `;`, NUL, dots, slashes and backslashes, overlong and invalid UTF-8, Unicode that
normalizes, mixed case, trailing and repeated `/`) and sends them with raw sockets (an HTTP client would normalize
them). For each one, either the gateway refused it (4xx, and the upstream saw nothing), or the upstream got exactly
the authorized endpoint with the very segments the client named: read the way the connector's server reads a target
(httptools' URL parser, one percent-decoding, as uvicorn does), it is `/persons/{that id}/residence`.
"""

from __future__ import annotations

import asyncio
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, unquote_to_bytes

import httptools
import jwt
import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from lienthong.redis_connection import free_port
from policies.audit_log import iter_records
from tests.mesh_support import MESH_TLS, Mesh, call_headers

SERVICE = "VN/GOV/BCA/population/persons"
PERSON = "001060275463"
NATIONAL_CLIENT = "VN/GOV/BHXH/insurance"  # home: national, which hosts the service
HANOI_CLIENT = "VN/PROV/HANOI/justice"  # home: hanoi, one hop away
AUTHORIZED = re.compile(r"/persons/([^/]+)/residence")


class Recorder:
    """The connector: an HTTP/1.1 server on its own thread that records each request target as it arrived (bytes)
    with the gateway assertion that came with it, and answers 200 with a small JSON document."""

    def __init__(self) -> None:
        self.targets: list[bytes] = []
        self.assertions: list[bytes] = []
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)

    async def _start(self) -> None:
        self.server = await self.loop.create_server(lambda: _Recording(self), "127.0.0.1", self.port)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


class _Recording(asyncio.Protocol):
    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.assertion = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.close()

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"x-lienthong-assertion":
            self.assertion = value

    def on_message_complete(self) -> None:
        self.recorder.assertions.append(self.assertion)
        self.recorder.targets.append(self.url)
        body = orjson.dumps({"id": "x", "target": self.url.decode("latin-1")})
        head = f"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
        assert self.transport is not None
        self.transport.write(head.encode() + body)
        self.url = b""


@pytest.fixture(scope="module")
def recorder() -> Iterator[Recorder]:
    rec = Recorder()
    yield rec
    rec.close()


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory, recorder: Recorder) -> Iterator[Mesh]:
    root = tmp_path_factory.mktemp("path-mesh")
    m = Mesh(root, root / "logs", policies="authn,authz,audit", registry="standin")
    for code in ("national", "hanoi"):
        m.add_gateway(code)
    try:
        m.start_registry()
        m.add_parties({"VN/GOV/BCA": "national", "VN/GOV/BHXH": "national", "VN/PROV/HANOI": "hanoi"},
                      ("VN/GOV/BCA/population", NATIONAL_CLIENT, HANOI_CLIENT),
                      (NATIONAL_CLIENT, HANOI_CLIENT))  # fmt: skip
        m.add_service(SERVICE, "national", f"http://127.0.0.1:{recorder.port}",
                      [("GET", "/persons/{id}"), ("GET", "/persons/{id}/residence")], subject_param="id")  # fmt: skip
        only_residence = [{"method": "GET", "path": "/persons/{id}/residence"}]
        m.add_grant("g-national", NATIONAL_CLIENT, SERVICE, ["birth-registration"], endpoints=only_residence)
        m.add_grant("g-hanoi", HANOI_CLIENT, SERVICE, ["birth-registration"], endpoints=only_residence)
        m.publish()
        m.start_gateways({"national": {}, "hanoi": {}})
        yield m
    finally:
        m.stop()


def _send(mesh: Mesh, home: str, target: bytes) -> tuple[int, dict[str, str], bytes]:
    """One request over a fresh socket, the target exactly as given; the status, headers and body of the answer."""
    client = NATIONAL_CLIENT if home == "national" else HANOI_CLIENT
    headers = call_headers(mesh, client, home)
    head = b"GET " + target + b" HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()).encode() + b"\r\n"
    data = b""
    raw = socket.create_connection(("127.0.0.1", mesh.gateways[home].port), timeout=60)
    with MESH_TLS.wrap_socket(raw) as sock:  # the mesh's TLS, the bytes of the request still exactly as given
        sock.sendall(head)
        while b"\r\n\r\n" not in data and (chunk := sock.recv(65536)):
            data += chunk
        raw_head, _, body = data.partition(b"\r\n\r\n")
        lines = raw_head.decode("latin-1").split("\r\n")
        fields = dict((k.lower(), v.strip()) for k, _, v in (line.partition(":") for line in lines[1:]))
        # read to the announced length: the answer is complete then, whenever the server's close reaches us
        while len(body) < int(fields.get("content-length", "0")) and (chunk := sock.recv(65536)):
            body += chunk
    return int(lines[0].split(" ")[1]), fields, body


def _segments_once_decoded(rest: bytes) -> list[str] | None:
    """The segments the client named, percent-decoded once as UTF-8 (None where they are no such text)."""
    try:
        return [unquote_to_bytes(seg).decode("utf-8") for seg in rest.split(b"/")]
    except UnicodeDecodeError:
        return None


def check_differential(mesh: Mesh, recorder: Recorder, home: str, rest: bytes) -> tuple[int, dict[str, str]]:
    """Send /r1/SERVICE + rest; the gateway refused it, or the upstream got exactly the authorized endpoint."""
    seen = len(recorder.targets)
    status, headers, body = _send(mesh, home, f"/r1/{SERVICE}".encode() + rest)
    reached = recorder.targets[seen:]
    if status != 200:
        assert 400 <= status < 500, (status, body[:300])
        assert reached == [], f"refused with {status} but the upstream got {reached}"
        return status, headers
    assert len(reached) == 1, reached
    target = reached[0]
    url = httptools.parse_url(target)
    assert url.fragment is None and url.userinfo is None
    served = unquote(url.path.decode("latin-1"), errors="strict")  # how uvicorn (the connectors' server) routes
    match = AUTHORIZED.fullmatch(served)
    assert match is not None, f"authorized /persons/{{id}}/residence, the upstream served {served!r} ({target!r})"
    # and with the very id the client named (the id the gateway matched, audited and checked the grant for)
    named = _segments_once_decoded(rest.split(b"?", 1)[0].lstrip(b"/"))
    assert named == ["persons", match.group(1), "residence"], (named, served)
    # one canonical spelling: every byte outside the unreserved and safe sub-delimiters percent-encoded
    assert url.path == ("/persons/" + quote(match.group(1), safe="!$&'()*+,=:@") + "/residence").encode()
    # and the hosting gateway signed for the connector exactly the request it served (tests/test_connector_path_binding)
    claims = jwt.decode(recorder.assertions[seen], options={"verify_signature": False})
    assert (claims["method"], claims["path"]) == ("GET", served)
    return status, headers


# -- what hypothesis draws ---------------------------------------------------------------------------------------

ODD = [
    "#", "%23", "?", "%3F", "%3f", ";", "%3B", "%00", "%0A", "%0d", "%7F", "%C2%85", ".", "..", "%2e", "%2E",
    "%2e%2e", ".%2e", "%2f", "%2F", "%5C", "%5c", "\\", "%25", "%252e", "%252F", "%", "%zz", "%C0%AF", "%C0%AE",
    "%E0%80%AF", "%C1%9C", "%FF", "%ED%A0%80", "%EF%BC%8F", "%EF%BC%8E", "%E2%88%95", "%EF%BD%92", "%E2%84%AA",
    "%EF%AC%81", "e%CC%81", "%C3%A9", "%E1%BA%A1", "%20", "+", "~", "!", "$", "&", "'", "(", ")", "*", ",", "=", ":",
    "@", "[", "]", "{", "}", "|", "^", "`", '"', "<", ">", "\u00e9", "\uff0f",
]  # fmt: skip
WORDS = ["persons", "residence", PERSON, "Persons", "RESIDENCE", "Residence", "%70ersons", "residenc%65",
         "%72%65%73%69%64%65%6E%63%65", "%72%65%73%69%64%65%6e%63%65", "persons%00", "residence%20"]  # fmt: skip

BENIGN = ["", "", "", "%20", "+", "~", "!", "$", "&", "'", "(", ")", "*", ",", "=", ":", "@", "%41", "%7e", "%7E",
          "%C3%A9", "%E1%BA%A1", "{", "|", "%5B", "-", "_"]  # fmt: skip

piece = st.sampled_from(ODD + WORDS)
segment = st.lists(piece, max_size=3).map("".join)
person = st.tuples(st.sampled_from(BENIGN + ODD), st.just(PERSON), st.sampled_from(BENIGN + ODD)).map("".join)
near = st.tuples(  # the authorized endpoint's shape, each part spelled oddly now and then
    st.sampled_from(["persons"] * 6 + WORDS[3:7]),
    st.one_of(st.just(PERSON), person, person),
    st.sampled_from(["residence"] * 6 + WORDS[4:]),
).map(list)
suffix = st.sampled_from([""] * 8 + ["?x=1", "/", "//", "?x=1#/y", "#", "#/residence", "/.", "/..", "/%2e%2e",
                                      "/%2F", ";x", "%3B", "/residence"])  # fmt: skip
paths = st.tuples(st.one_of(near, near, st.lists(segment, min_size=1, max_size=5)), suffix).map(
    lambda parts: ("/" + "/".join(parts[0]) + parts[1]).encode("utf-8")
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(home=st.sampled_from(["national", "hanoi"]), rest=paths)
@example(home="national", rest=f"/persons/{PERSON}#/residence".encode())
@example(home="hanoi", rest=f"/persons/{PERSON}#/residence".encode())
@example(home="national", rest=f"/persons/{PERSON}%23/residence".encode())
@example(home="national", rest=f"/persons/{PERSON}?/residence".encode())
@example(home="national", rest=f"/persons/{PERSON}%3F/residence".encode())
@example(home="national", rest=f"/persons/{PERSON};/residence".encode())
@example(home="national", rest=f"/persons/{PERSON}%00/residence".encode())
@example(home="national", rest=f"/persons/{PERSON}%C0%AF/residence".encode())
@example(home="national", rest=f"/persons/{PERSON}%FF/residence".encode())
@example(home="national", rest=f"/persons/{PERSON}%EF%BC%8F/residence".encode())
@example(home="national", rest=f"/persons/{PERSON}/%EF%BD%92esidence".encode())
@example(home="national", rest=f"/persons/{PERSON}/residenc%65".encode())
@example(home="national", rest=f"/persons/{PERSON}/residence%0A".encode())
@example(home="hanoi", rest=f"/persons/{PERSON}%25/residence".encode())
@example(home="national", rest=f"/persons/{PERSON}%2f/residence".encode())
@example(home="national", rest=f"/persons/{PERSON}/x/%2e%2e/residence".encode())
@example(home="national", rest=f"/Persons/{PERSON}/residence".encode())
@example(home="national", rest=f"/persons//{PERSON}/residence".encode())
@example(home="national", rest=f"/persons/{PERSON}/residence/".encode())
def test_the_upstream_serves_what_was_authorized_or_nothing(
    mesh: Mesh, recorder: Recorder, home: str, rest: bytes
) -> None:
    check_differential(mesh, recorder, home, rest)


def test_the_authorized_call_itself_still_goes_through(mesh: Mesh, recorder: Recorder) -> None:
    for home in ("national", "hanoi"):
        for person in (PERSON, "001%20060", "Ng%C3%B4"):
            status, _ = check_differential(mesh, recorder, home, f"/persons/{person}/residence".encode())
            assert status == 200


def _audited(directory: Path, txid: str, timeout: float = 10.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        found = [r for _, r in iter_records(directory) if r.get("transaction_id") == txid]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


@pytest.mark.parametrize("home", ["national", "hanoi"])
def test_the_reviews_fragment_case_is_400_and_audited(mesh: Mesh, recorder: Recorder, home: str) -> None:
    """The review's case: a grant for /persons/{id}/residence only, and `#` to make the connector serve
    /persons/{id}. RFC 9112 §3.2: a request target has no fragment, so 400 invalid-path (X-Road-Error
    Client.BadRequest, PR-REST 1.0.4 §4.3 and §4.6; problem+json, which call_headers asks for), and the refusal is
    audited at the gateway that refused it."""
    seen = len(recorder.targets)
    status, headers, body = _send(mesh, home, f"/r1/{SERVICE}/persons/{PERSON}#/residence".encode())
    assert status == 400, body[:300]
    assert headers["content-type"] == "application/problem+json;charset=utf-8"
    problem = orjson.loads(body)
    assert problem["code"] == "invalid-path" and problem["field"] == "path" and problem["status"] == 400
    assert headers["x-road-error"] == problem["xroad_type"] == "Client.BadRequest"
    assert recorder.targets[seen:] == []
    records = _audited(mesh.gateways[home].data_dir / "audit", headers["x-road-id"])
    assert [(r["status"], r["error_code"]) for r in records] == [(400, "invalid-path")]
