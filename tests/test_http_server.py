"""gateway.http_server over real sockets: a `Server` runs in a background thread's uvloop, in front of a small fake
app (an `r1` that echoes what it was given as JSON, and an ASGI app with an echo, a streamed and a fixed-length
route), and the tests talk to it with raw sockets on 127.0.0.1 and with httpx. Nothing of the server is mocked; the
only changes are module time limits lowered with monkeypatch so that the timeouts can be seen within a second.

Covered: keep-alive, pipelining order, HTTP/1.0 and `Connection: close`, HEAD, `Expect: 100-continue`, 413 by
Content-Length and by chunked framing (through `body_refused`, then a close), 431 past MAX_HEADERS, 400 for
malformed HTTP, the head / body / keep-alive timeouts, the ASGI bridge's scope and response framing, a stop that
lets a call in flight finish, and (issue 13) RFC 9112's framing rules: a fragment, no Host or two Hosts get 400
(§3.2), HTTP/1.0 with Transfer-Encoding closes after its answer (§6.1), and answers a client leaves unread wait for
it (back-pressure). The tests in between pin down bugs found while writing these tests.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import pytest
import uvloop

from gateway import http_server
from gateway.http_server import Server
from lienthong.problem import PROBLEM_MEDIA_TYPE, Problem
from tests.mesh_support import LIENTHONG_ACCEPT

BODY_LIMIT = 1000
BIG = b"x" * 32768  # the answer of /r1/lots


# -- the fake app ------------------------------------------------------------------------------------------------


@dataclass
class FakeReply:
    status: int
    headers: list[tuple[str, str]]
    body: bytes


class FakeApp:
    """`/r1/slow?SECONDS` sleeps before answering, `/r1/lots` answers 32 KiB, every other /r1 path echoes. ASGI:
    /stream, /fixed, else echo."""

    body_limit = BODY_LIMIT

    def __init__(self) -> None:
        self.r1_calls: list[dict[str, Any]] = []
        self.asgi_calls: list[dict[str, Any]] = []
        self.slow_started = threading.Event()
        self.events: list[tuple[str, str]] = []  # (start|end, query) of each r1 call, in order

    async def r1(self, method, raw_path, query, headers, body, started, body_refused, peer=None) -> FakeReply:
        call = {"method": method, "path": raw_path, "query": query.decode("latin-1"), "body": body,
                "headers": dict(headers), "started": started, "body_refused": body_refused, "peer": peer}  # fmt: skip
        self.r1_calls.append(call)
        self.events.append(("start", call["query"]))
        if raw_path == "/r1/slow":
            self.slow_started.set()
            await asyncio.sleep(float(query or b"0.3"))
        self.events.append(("end", call["query"]))
        if raw_path == "/r1/lots":
            return FakeReply(200, [("content-type", "text/plain"), ("x-query", call["query"])], BIG)
        if body_refused is not None:
            headers_out = [("content-type", PROBLEM_MEDIA_TYPE), ("x-road-error", body_refused.code)]
            return FakeReply(body_refused.status, headers_out, body_refused.to_bytes())
        echo = {"method": method, "path": raw_path, "query": call["query"], "body": body.decode("latin-1"),
                "x-test": headers.get("x-test"), "content-type": headers.get("content-type")}  # fmt: skip
        return FakeReply(200, [("content-type", "application/json"), ("x-echo", "r1")], orjson.dumps(echo))

    async def __call__(self, scope, receive, send) -> None:
        assert scope["type"] == "http"
        path = scope["path"]
        if path == "/stream":
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
            await send({"type": "http.response.body", "body": b"one", "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": True})  # an empty part: no chunk
            await send({"type": "http.response.body", "body": b"two!", "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        if path == "/fixed":
            headers = [(b"content-type", b"text/plain"), (b"content-length", b"5")]
            await send({"type": "http.response.start", "status": 201, "headers": headers})
            await send({"type": "http.response.body", "body": b"he", "more_body": True})
            await send({"type": "http.response.body", "body": b"llo", "more_body": False})
            return
        message = await receive()
        body = message.get("body", b"")
        self.asgi_calls.append({"scope": dict(scope), "body": body})
        echo = {"method": scope["method"], "path": scope["path"], "raw_path": scope["raw_path"].decode("latin-1"),
                "query_string": scope["query_string"].decode("latin-1"), "body_length": len(body),
                "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in scope["headers"]],
                "client_port": scope["client"][1] if scope["client"] else None}  # fmt: skip
        out = orjson.dumps(echo)
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(out)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": out})


# -- the server in a thread ------------------------------------------------------------------------------------


class Running:
    def __init__(self, app: FakeApp, loop: asyncio.AbstractEventLoop, tls: ssl.SSLContext | None = None) -> None:
        self.app = app
        self.loop = loop
        self.thread = threading.Thread(target=loop.run_forever, daemon=True)
        self.thread.start()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen(128)
        sock.setblocking(False)
        self.port = sock.getsockname()[1]
        self.server = Server(app, loop, tls=tls)
        self.run(self.server.start(sock))

    def run(self, coro, timeout: float = 10.0):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop_soon(self):
        return asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop)

    def close(self) -> None:
        self.stop_soon().result(15)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture
def app() -> FakeApp:
    return FakeApp()


@pytest.fixture
def server(app: FakeApp, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(http_server, "SHUTDOWN_GRACE", 3.0)
    running = Running(app, uvloop.new_event_loop())
    yield running
    running.close()


# -- a raw HTTP/1.1 client ---------------------------------------------------------------------------------------


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes
    raw: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)


class Raw:
    """A blocking socket with just enough HTTP to read answers, and to see the raw bytes."""

    def __init__(self, port: int, timeout: float = 5.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise EOFError(f"closed with {self.buf[:200]!r} unread")
        self.buf += chunk

    def _take_until(self, marker: bytes) -> bytes:
        while marker not in self.buf:
            self._fill()
        out, self.buf = self.buf.split(marker, 1)
        return out + marker

    def _take(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._fill()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def read_head(self) -> tuple[int, dict[str, str], bytes]:
        head = self._take_until(b"\r\n\r\n")
        lines = head[:-4].decode("latin-1").split("\r\n")
        assert lines[0].startswith("HTTP/1.1 "), f"not a status line: {head[:60]!r}"
        status = lines[0].split(" ", 2)[1]
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            assert name.lower() not in headers, f"duplicate header {name}"
            headers[name.lower()] = value.strip()
        return int(status), headers, head

    def read_response(self, head_request: bool = False) -> Response:
        status, headers, raw = self.read_head()
        if head_request or status in (100, 204, 304):
            return Response(status, headers, b"", raw)
        if "content-length" in headers:
            body = self._take(int(headers["content-length"]))
            return Response(status, headers, body, raw + body)
        assert headers.get("transfer-encoding") == "chunked", headers
        body = b""
        while True:
            size_line = self._take_until(b"\r\n")
            raw += size_line
            size = int(size_line.split(b";")[0], 16)
            data = self._take(size + 2)
            raw += data
            assert data.endswith(b"\r\n")
            if size == 0:
                return Response(status, headers, body, raw)
            body += data[:-2]

    def at_eof(self, within: float = 3.0) -> bool:
        """True when the server closes (FIN or reset) within `within` seconds and sent nothing more."""
        if self.buf:
            return False
        self.sock.settimeout(within)
        try:
            chunk = self.sock.recv(65536)
        except TimeoutError:
            return False
        except ConnectionResetError:
            return True
        if chunk:
            self.buf += chunk
            return False
        return True

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def raw(server: Running):
    opened: list[Raw] = []

    def connect(timeout: float = 5.0) -> Raw:
        conn = Raw(server.port, timeout)
        opened.append(conn)
        return conn

    yield connect
    for conn in opened:
        conn.close()


def get(path: str, *extra: str, version: str = "1.1", method: str = "GET") -> bytes:
    lines = [f"{method} {path} HTTP/{version}", "Host: test", *extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


# -- the server's own refusals: X-Road's shape, or problem+json on request (docs/protocol.md §6) -----------------


def xroad_refusal(response: Response, xtype: str, code: str, status: int) -> dict[str, Any]:
    """A server-level refusal of a request that named no media type: X-Road's JSON (PR-REST 1.0.4 §4.6), 400 for
    `Client.*` and 500 for `Server.*`, the X-Road type in X-Road-Error and `type`, the tracking id in `detail`, and
    lienthong's code and precise status beside them. The body, for the caller's further checks."""
    assert response.status == (400 if xtype.startswith("Client.") else 500), (response.status, response.body[:300])
    assert response.headers["content-type"] == "application/json;charset=utf-8"
    assert response.headers["x-road-error"] == xtype
    body: dict[str, Any] = response.json()
    assert body["type"] == xtype and body["code"] == code and body["status"] == status
    assert body["detail"] == response.headers["x-road-request-id"]
    return body


def problem_refusal(response: Response, code: str, status: int) -> dict[str, Any]:
    """A server-level refusal of a request that asked for `application/problem+json`: RFC 9457 at lienthong's
    precise status, X-Road-Error still the X-Road type (PR-REST 1.0.4 §4.3, docs/protocol.md §6)."""
    assert response.status == status, (response.status, response.body[:300])
    assert response.headers["content-type"] == PROBLEM_MEDIA_TYPE + ";charset=utf-8"
    body: dict[str, Any] = response.json()
    assert body["code"] == code and body["status"] == status
    assert response.headers["x-road-error"] == body["xroad_type"]
    return body


# -- keep-alive, pipelining, closing ---------------------------------------------------------------------------


def test_keep_alive_serves_several_requests_on_one_connection(server, raw, app) -> None:
    conn = raw()
    for i in range(5):
        body = f"n={i}".encode()
        conn.send(f"POST /r1/echo/{i}?i={i} HTTP/1.1\r\nHost: t\r\nX-Test: v{i}\r\nContent-Type: text/plain\r\n"
                  f"Content-Length: {len(body)}\r\n\r\n".encode() + body)  # fmt: skip
        response = conn.read_response()
        assert response.status == 200
        assert "connection" not in response.headers
        assert response.headers["x-echo"] == "r1"
        assert response.headers["date"].endswith("GMT")
        assert response.json() == {"method": "POST", "path": f"/r1/echo/{i}", "query": f"i={i}", "body": f"n={i}",
                                   "x-test": f"v{i}", "content-type": "text/plain"}  # fmt: skip
    assert len(app.r1_calls) == 5
    assert abs(app.r1_calls[0]["started"] - time.time()) < 5  # wall-clock time, not the loop's clock


def test_pipelined_requests_are_answered_in_order(server, raw, app) -> None:
    conn = raw()
    # the first is slow: were they answered concurrently, the fast ones would come out first
    conn.send(get("/r1/slow?0.3") + get("/r1/echo?second") + get("/r1/echo?third") + get("/r1/echo?fourth"))
    answers = [conn.read_response() for _ in range(4)]
    assert [a.status for a in answers] == [200] * 4
    assert [a.json()["query"] for a in answers] == ["0.3", "second", "third", "fourth"]
    # and one at a time: each call ended before the next began
    assert app.events == [("start", "0.3"), ("end", "0.3"), ("start", "second"), ("end", "second"),
                          ("start", "third"), ("end", "third"), ("start", "fourth"), ("end", "fourth")]  # fmt: skip
    conn.send(get("/r1/echo?after"))
    assert conn.read_response().json()["query"] == "after"


def test_http_1_0_without_keep_alive_is_closed_after_the_answer(server, raw) -> None:
    conn = raw()
    conn.send(get("/r1/echo?old", version="1.0"))
    response = conn.read_response()
    assert response.status == 200 and response.json()["query"] == "old"
    assert response.headers["connection"] == "close"
    assert conn.at_eof()


def test_connection_close_is_honoured(server, raw) -> None:
    conn = raw()
    conn.send(get("/r1/echo?bye", "Connection: close"))
    response = conn.read_response()
    assert response.status == 200 and response.headers["connection"] == "close"
    assert conn.at_eof()


def test_asgi_answer_also_closes_on_connection_close(server, raw) -> None:
    conn = raw()
    conn.send(get("/fixed", "Connection: close"))
    response = conn.read_response()
    assert response.status == 201 and response.body == b"hello"
    assert response.headers["connection"] == "close"
    assert conn.at_eof()


def test_head_has_a_content_length_and_no_body(server, raw) -> None:
    conn = raw()
    conn.send(get("/r1/echo?q"))
    full = conn.read_response()
    conn.send(get("/r1/echo?q", method="HEAD"))
    head = conn.read_response(head_request=True)
    assert head.status == 200
    # the echo says HEAD instead of GET: one byte longer than the GET answer
    assert int(head.headers["content-length"]) == len(full.body) + 1
    # no body bytes were written: the next answer on the connection starts right away with a status line
    conn.send(get("/r1/echo?next"))
    assert conn.read_response().json()["query"] == "next"


def test_head_through_the_asgi_bridge_has_no_body(server, raw) -> None:
    conn = raw()
    conn.send(get("/fixed", method="HEAD"))
    head = conn.read_response(head_request=True)
    assert head.status == 201 and head.headers["content-length"] == "5"
    conn.send(get("/r1/echo?next"))
    assert conn.read_response().json()["query"] == "next"


def test_expect_100_continue_gets_an_interim_answer_before_the_body(server, raw, app) -> None:
    conn = raw()
    conn.send(b"POST /r1/upload HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
    interim = conn.read_response()
    assert interim.status == 100 and interim.raw == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert app.r1_calls == []  # nothing is answered before the body is in
    conn.send(b"hello")
    final = conn.read_response()
    assert final.status == 200 and final.json()["body"] == "hello"


# -- bounds ------------------------------------------------------------------------------------------------------


def _assert_refused_413(response: Response, calls: list[dict[str, Any]]) -> None:
    assert response.status == 413
    assert response.headers["content-type"] == PROBLEM_MEDIA_TYPE
    assert response.headers["connection"] == "close"
    assert response.json()["code"] == "body-too-large"
    assert len(calls) == 1
    call = calls[0]
    refused = call["body_refused"]
    assert isinstance(refused, Problem) and refused.status == 413 and refused.code == "body-too-large"
    assert call["body"] == b""  # nothing of the oversized body reaches the app


def test_body_over_the_limit_by_content_length_is_refused_through_r1(server, raw, app) -> None:
    conn = raw()
    # with Expect: the 413 comes instead of the 100, and before any byte of the body is sent
    conn.send(f"POST /r1/big HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\n"
              f"Content-Length: {BODY_LIMIT + 1}\r\n\r\n".encode())  # fmt: skip
    response = conn.read_response()
    _assert_refused_413(response, app.r1_calls)
    assert app.r1_calls[0]["path"] == "/r1/big"
    # the client may still send some of the body; it is read and dropped, then the connection ends
    conn.send(b"x" * 500)
    assert conn.at_eof(within=5)


def test_body_at_the_limit_is_accepted(server, raw, app) -> None:
    conn = raw()
    conn.send(f"POST /r1/ok HTTP/1.1\r\nHost: t\r\nContent-Length: {BODY_LIMIT}\r\n\r\n".encode() + b"y" * BODY_LIMIT)
    response = conn.read_response()
    assert response.status == 200 and response.json()["body"] == "y" * BODY_LIMIT
    assert app.r1_calls[0]["body_refused"] is None


def test_body_over_the_limit_by_chunks_is_refused_through_r1(server, raw, app, monkeypatch) -> None:
    monkeypatch.setattr(http_server, "LINGER_SECONDS", 0.5)
    conn = raw()
    conn.send(b"POST /r1/chunky HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
    conn.send(b"190\r\n" + b"a" * 400 + b"\r\n")
    conn.send(b"190\r\n" + b"b" * 400 + b"\r\n")
    conn.send(b"190\r\n" + b"c" * 400 + b"\r\n")  # 1200 bytes now: over the limit of 1000
    response = conn.read_response()
    _assert_refused_413(response, app.r1_calls)
    with pytest.raises(OSError):  # the rest is not wanted: reading stops, then the connection ends
        for _ in range(100):
            conn.send(b"190\r\n" + b"d" * 400 + b"\r\n")
            time.sleep(0.05)


def test_chunked_body_under_the_limit_is_joined(server, raw, app) -> None:
    conn = raw()
    conn.send(b"POST /r1/chunky HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
    conn.send(b"4;ext=1\r\ndefg\r\n0\r\n\r\n")
    response = conn.read_response()
    assert response.status == 200 and response.json()["body"] == "abcdefg"


def test_more_than_max_headers_is_431(server, raw, app) -> None:
    ok = raw()
    fields = [f"X-H{i}: {i}" for i in range(http_server.MAX_HEADERS - 1)]  # plus Host: exactly MAX_HEADERS
    ok.send(get("/r1/echo?many", *fields))
    assert ok.read_response().status == 200

    conn = raw()
    # one X-H field less and an Accept instead, read before the field over the limit: the precise status, asked for
    conn.send(get("/r1/echo?toomany", f"Accept: {LIENTHONG_ACCEPT}", *fields[1:], "X-One-Too-Many: 1"))
    response = conn.read_response()
    problem = problem_refusal(response, "invalid-parameter", 431)
    assert problem["xroad_type"] == "Client.BadRequest"
    assert response.headers["connection"] == "close"
    assert problem["field"] == "headers"
    assert [c["query"] for c in app.r1_calls] == ["many"]
    assert conn.at_eof(within=5)


def test_head_over_max_head_bytes_is_431(server, raw, app) -> None:
    """No Accept: X-Road's shape (PR-REST 1.0.4 §4.6), Client.BadRequest at 400, lienthong's 431 in the body."""
    conn = raw()
    conn.send(get("/r1/echo", "X-Big: " + "z" * (http_server.MAX_HEAD_BYTES + 10)))
    response = conn.read_response()
    body = xroad_refusal(response, "Client.BadRequest", "invalid-parameter", 431)
    assert body["field"] == "headers" and response.headers["connection"] == "close"
    assert app.r1_calls == []


def test_malformed_request_line_is_400_and_closed(server, raw, app) -> None:
    """No head to read an Accept from: X-Road's shape (PR-REST 1.0.4 §4.6), Client.BadRequest."""
    conn = raw()
    conn.send(b"GET /r1/echo HTTP/9.9 what\r\n\r\n")
    response = conn.read_response()
    problem = xroad_refusal(response, "Client.BadRequest", "invalid-parameter", 400)
    assert response.headers["connection"] == "close"
    assert problem["field"] == "request" and "well-formed" in problem["message"]
    assert app.r1_calls == []
    assert conn.at_eof(within=5)


def test_malformed_chunk_is_400_invalid_body(server, raw, app) -> None:
    conn = raw()
    conn.send(b"POST /r1/echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nnope\r\n")
    response = conn.read_response()
    assert response.status == 400 and response.json()["code"] == "invalid-body"
    assert app.r1_calls == []


# -- time limits (lowered for the test; the sweep runs once a second) ------------------------------------------


def test_slow_head_is_answered_408_and_closed(server, raw, app, monkeypatch) -> None:
    monkeypatch.setattr(http_server, "HEADER_TIMEOUT", 0.5)
    conn = raw()
    started = time.monotonic()
    # and never the rest; the Accept already read asks for the precise status
    conn.send(f"GET /r1/echo HTTP/1.1\r\nHost: t\r\nAccept: {LIENTHONG_ACCEPT}\r\nX-Slow".encode())
    response = conn.read_response()
    elapsed = time.monotonic() - started
    problem = problem_refusal(response, "invalid-parameter", 408)
    assert response.headers["connection"] == "close"
    assert problem["field"] == "request"
    assert conn.at_eof()
    assert 0.4 <= elapsed < 3.0, elapsed
    assert app.r1_calls == []


def test_slow_body_is_answered_408_and_closed(server, raw, app, monkeypatch) -> None:
    """No Accept: X-Road's shape (PR-REST 1.0.4 §4.6), Client.BadRequest at 400, lienthong's 408 in the body."""
    monkeypatch.setattr(http_server, "BODY_TIMEOUT", 0.5)
    conn = raw()
    conn.send(b"POST /r1/echo HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nabc")
    response = conn.read_response()
    assert xroad_refusal(response, "Client.BadRequest", "invalid-parameter", 408)["field"] == "request"
    assert conn.at_eof()
    assert app.r1_calls == []


def test_idle_keep_alive_connection_is_closed_without_an_answer(server, raw, monkeypatch) -> None:
    monkeypatch.setattr(http_server, "KEEPALIVE_TIMEOUT", 0.5)
    conn = raw()
    conn.send(get("/r1/echo?once"))
    assert conn.read_response().status == 200
    started = time.monotonic()
    assert conn.at_eof(within=4)  # closed, and no 408 for a request that never began
    assert time.monotonic() - started >= 0.3


def test_a_long_call_is_not_cut_by_the_sweep(server, raw, monkeypatch) -> None:
    monkeypatch.setattr(http_server, "KEEPALIVE_TIMEOUT", 0.5)
    monkeypatch.setattr(http_server, "HEADER_TIMEOUT", 0.5)
    conn = raw()
    conn.send(get("/r1/slow?1.6"))  # longer than any of the limits: the app bounds its own calls
    response = conn.read_response()
    assert response.status == 200 and response.json()["query"] == "1.6"


# -- the ASGI bridge -----------------------------------------------------------------------------------------------


def test_asgi_bridge_scope(server, raw, app) -> None:
    conn = raw()
    conn.send(b"POST /ops/v1/some%20thing/%C3%A9t%C3%A9?a=1&b=%20x HTTP/1.1\r\nHost: t\r\nX-Test: Value\r\n"
              b"X-Test: again\r\nContent-Length: 4\r\n\r\nbody")  # fmt: skip
    response = conn.read_response()
    assert response.status == 200
    echo = response.json()
    assert echo["method"] == "POST"
    assert echo["path"] == "/ops/v1/some thing/été"  # percent-decoded, as UTF-8
    assert echo["raw_path"] == "/ops/v1/some%20thing/%C3%A9t%C3%A9"  # without the query
    assert echo["query_string"] == "a=1&b=%20x"  # as sent
    assert echo["body_length"] == 4
    # names lower-cased, values as sent, repeats kept in order
    assert echo["headers"] == [["host", "t"], ["x-test", "Value"], ["x-test", "again"], ["content-length", "4"]]
    assert echo["client_port"] == conn.sock.getsockname()[1]
    scope = app.asgi_calls[0]["scope"]
    assert scope["server"] == ("127.0.0.1", server.port)
    assert scope["scheme"] == "http" and scope["root_path"] == ""
    assert app.r1_calls == []  # a path not starting with /r1/ never reaches r1 directly


def test_percent_encoded_r1_takes_the_direct_route_with_its_raw_path(server, raw, app) -> None:
    conn = raw()
    conn.send(get("/%721/x"))
    response = conn.read_response()
    assert response.headers["x-echo"] == "r1" and response.json()["path"] == "/%721/x"
    assert app.asgi_calls == [] and [c["path"] for c in app.r1_calls] == ["/%721/x"]


def test_percent_encoded_r1_with_an_oversized_body_is_refused_through_r1(server, raw, app) -> None:
    conn = raw()
    conn.send(f"POST /%721/big HTTP/1.1\r\nHost: t\r\nContent-Length: {BODY_LIMIT + 1}\r\n\r\n".encode())
    _assert_refused_413(conn.read_response(), app.r1_calls)
    assert app.r1_calls[0]["path"] == "/%721/big"


def test_a_percent_sign_elsewhere_stays_on_the_asgi_bridge(server, raw, app) -> None:
    conn = raw()
    conn.send(get("/ops/v1/%721/x"))
    assert conn.read_response().json()["path"] == "/ops/v1/r1/x"
    assert app.r1_calls == []


def test_streamed_asgi_response_is_chunked(server, raw) -> None:
    conn = raw()
    conn.send(get("/stream"))
    response = conn.read_response()
    assert response.status == 200
    assert response.headers["transfer-encoding"] == "chunked"
    assert "content-length" not in response.headers
    assert response.body == b"onetwo!"
    # the exact framing: one chunk per non-empty part, then the last chunk
    assert response.raw.endswith(b"\r\n\r\n3\r\none\r\n4\r\ntwo!\r\n0\r\n\r\n")
    conn.send(get("/fixed"))  # and the connection is still in step
    assert conn.read_response().body == b"hello"


def test_fixed_length_asgi_response_is_not_chunked(server, raw) -> None:
    conn = raw()
    conn.send(get("/fixed"))
    response = conn.read_response()
    assert response.status == 201
    assert response.headers["content-length"] == "5"
    assert "transfer-encoding" not in response.headers
    assert response.raw.endswith(b"\r\n\r\nhello")
    conn.send(get("/r1/echo?after"))
    assert conn.read_response().json()["query"] == "after"


def test_httpx_client_against_the_server(server) -> None:
    with httpx.Client(base_url=f"http://127.0.0.1:{server.port}", timeout=5) as client:
        streamed = client.get("/stream")
        assert streamed.status_code == 200 and streamed.text == "onetwo!"
        echoed = client.post("/r1/x/y", params={"k": "v w"}, content=b'{"a":1}',
                             headers={"content-type": "application/json", "x-test": "hx"})  # fmt: skip
        assert echoed.status_code == 200
        assert echoed.json() == {"method": "POST", "path": "/r1/x/y", "query": "k=v+w", "body": '{"a":1}',
                                 "x-test": "hx", "content-type": "application/json"}  # fmt: skip
        assert client.get("/fixed").text == "hello"


# -- stopping ------------------------------------------------------------------------------------------------------


def test_stop_lets_a_call_in_flight_finish(server, raw, app) -> None:
    idle = raw()
    idle.send(get("/r1/echo?idle"))
    assert idle.read_response().status == 200
    busy = raw()
    busy.send(get("/r1/slow?0.6"))
    assert app.slow_started.wait(5)
    stopping = server.stop_soon()
    time.sleep(0.2)
    assert not stopping.done()  # waiting for the call in flight
    assert idle.at_eof(within=2)  # while an idle connection is closed at once
    response = busy.read_response()
    assert response.status == 200 and response.json()["query"] == "0.6"
    stopping.result(5)
    assert busy.at_eof()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", server.port), timeout=2).close()


# -- the plain asyncio loop (the server must not depend on uvloop) ----------------------------------------------


def test_plain_asyncio_loop(monkeypatch) -> None:
    monkeypatch.setattr(http_server, "SHUTDOWN_GRACE", 3.0)
    app = FakeApp()
    running = Running(app, asyncio.new_event_loop())
    try:
        conn = Raw(running.port)
        conn.send(get("/r1/echo?a") + get("/stream"))
        assert conn.read_response().json()["query"] == "a"
        assert conn.read_response().body == b"onetwo!"
        conn.send(f"POST /r1/big HTTP/1.1\r\nHost: t\r\nContent-Length: {BODY_LIMIT + 1}\r\n\r\n".encode())
        _assert_refused_413(conn.read_response(), app.r1_calls[1:])
        assert conn.at_eof(within=5)
        conn.close()
    finally:
        running.close()


# -- bugs found while writing these tests, fixed: they stay as regression tests ------------------------------


def test_head_to_a_streamed_asgi_response_has_no_body(server, raw) -> None:
    conn = raw()
    conn.send(get("/stream", method="HEAD"))
    head = conn.read_response(head_request=True)
    assert head.status == 200
    conn.send(get("/r1/echo?next"))
    assert conn.read_response().json()["query"] == "next"


@pytest.mark.parametrize("accept", [None, LIENTHONG_ACCEPT])
def test_body_over_the_limit_on_an_asgi_path_is_refused(server, raw, app, accept: str | None) -> None:
    """The server's own 413: X-Road's shape by default (PR-REST 1.0.4 §4.6), problem+json at 413 on request."""
    conn = raw()
    asked = f"Accept: {accept}\r\n" if accept else ""
    conn.send(f"POST /ops/v1/things HTTP/1.1\r\nHost: t\r\n{asked}Transfer-Encoding: chunked\r\n\r\n".encode())
    conn.send(b"7d0\r\n" + b"a" * 2000 + b"\r\n")
    response = conn.read_response()
    assert app.asgi_calls == []  # the app must not act on a body it was never given
    if accept is None:
        body = xroad_refusal(response, "Client.BadRequest", "body-too-large", 413)
    else:
        body = problem_refusal(response, "body-too-large", 413)
    assert body["field"] == "body" and response.headers["connection"] == "close"


def test_malformed_pipelined_request_does_not_drop_earlier_ones(server, raw) -> None:
    conn = raw()
    conn.send(get("/r1/slow?0.3") + get("/r1/echo?second") + b"NOT HTTP AT ALL\r\n\r\n")
    assert conn.read_response().json()["query"] == "0.3"
    second = conn.read_response()
    assert second.status == 200 and second.json()["query"] == "second"
    assert conn.read_response().status == 400


def test_upgrade_request_gets_exactly_one_answer(server, raw) -> None:
    conn = raw()
    conn.send(get("/r1/echo?up", "Connection: Upgrade", "Upgrade: websocket"))
    conn.read_response()
    assert conn.at_eof(within=5), f"a second answer: {conn.buf[:60]!r}"


def test_streamed_response_to_http_1_0_is_not_chunked(server, raw) -> None:
    conn = raw()
    conn.send(get("/stream", version="1.0"))
    status, headers, _ = conn.read_head()
    assert status == 200
    assert "transfer-encoding" not in headers  # RFC 9112 §6.1: not to a 1.0 request


def test_100_continue_of_a_pipelined_request_waits_its_turn(server, raw) -> None:
    conn = raw()
    expecting = b"POST /r1/b HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n"
    conn.send(get("/r1/slow?0.3") + expecting)
    first, second = conn.read_response(), conn.read_response()
    assert first.status == 200 and first.json()["query"] == "0.3"
    assert second.status == 100


def test_stop_waits_for_a_call_whose_client_has_gone(server, raw, app) -> None:
    conn = raw()
    conn.send(get("/r1/slow?0.5"))
    assert app.slow_started.wait(5)
    conn.close()
    time.sleep(0.1)  # the server sees the close
    server.stop_soon().result(5)
    finished_before_stop_returned = ("end", "0.5") in app.events
    time.sleep(0.6)  # (so that the loop does not end with the call still pending)
    assert finished_before_stop_returned  # the call (which may have acted upstream) ran to its end


def test_trailer_fields_of_a_chunked_request_never_become_headers(server, raw, app) -> None:
    """Found while fixing the upstream client's trailer bug: llhttp hands trailers to on_header as well, and a
    trailer named like an identity header would otherwise overwrite what the head said before the app saw it."""
    conn = raw()
    conn.send(b"POST /r1/chunky HTTP/1.1\r\nHost: t\r\nX-Road-Client: VN/GOV/BTP/justice\r\n"
              b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX-Road-Client: VN/GOV/BCA/forged\r\n"
              b"Authorization: Bearer forged\r\n\r\n")  # fmt: skip
    response = conn.read_response()
    assert response.status == 200 and response.json()["body"] == "abc"
    headers = app.r1_calls[-1]["headers"]
    assert headers["x-road-client"] == "VN/GOV/BTP/justice"
    assert "authorization" not in headers


# -- RFC 9112 framing: fragment, Host, HTTP/1.0 with Transfer-Encoding (issue 13) --------------------------------


def _refused_400(response: Response, code: str, field: str, *, r1: bool) -> str:
    """A 400 refusal: on /r1 the (fake) app's problem+json, elsewhere the server's own, which a request with no
    Accept gets in X-Road's shape (PR-REST 1.0.4 §4.6). lienthong's detail, from whichever member holds it."""
    assert response.headers["connection"] == "close"
    if r1:
        assert response.status == 400 and response.headers["content-type"] == PROBLEM_MEDIA_TYPE
        body = response.json()
        assert body["code"] == code and body["field"] == field
        return str(body["detail"])
    body = xroad_refusal(response, "Client.BadRequest", code, 400)
    assert body["field"] == field
    return str(body["message"])


@pytest.mark.parametrize("target", ["/r1/VN/GOV/BCA/population/persons/persons/001#/residence",
                                    "/r1/echo?q=1#/residence", "/r1/echo#", "/other/path#x"])  # fmt: skip
def test_a_fragment_in_the_request_target_is_400(server, raw, app, target: str) -> None:
    """RFC 9112 §3.2: a request-target has no fragment. llhttp hands the '#' and what follows to on_url; a server
    behind us would cut there, so the gateway would authorize one path and the connector serve another."""
    conn = raw()
    conn.send(get(target))
    response = conn.read_response()
    _refused_400(response, "invalid-path", "path", r1=target.startswith("/r1/"))
    if target.startswith("/r1/"):  # through the app, which audits the refusal like any other /r1 refusal
        assert response.headers["x-road-error"] == "invalid-path"
        assert [c["body_refused"].code for c in app.r1_calls] == ["invalid-path"]
    else:
        assert app.asgi_calls == []
    assert conn.at_eof()


@pytest.mark.parametrize(
    ("head", "detail"),
    [("GET /r1/echo HTTP/1.1\r\n\r\n", "no Host"),
     ("GET /r1/echo HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", "two Host"),
     ("GET /r1/echo HTTP/1.0\r\nHost: a\r\nhost: a\r\n\r\n", "two Host"),
     ("GET /ops/v1/x HTTP/1.1\r\nX-Test: 1\r\n\r\n", "no Host")],
)  # fmt: skip
def test_no_host_or_two_hosts_is_400(server, raw, app, head: str, detail: str) -> None:
    """RFC 9112 §3.2: a server MUST answer 400 to an HTTP/1.1 request without Host and to any request with more
    than one Host field line."""
    conn = raw()
    conn.send(head.encode())
    response = conn.read_response()
    assert detail in _refused_400(response, "invalid-parameter", "Host", r1=" /r1/" in head)
    assert app.asgi_calls == [] and all(c["body_refused"] is not None for c in app.r1_calls)
    assert conn.at_eof()


def test_http_1_0_needs_no_host(server, raw) -> None:
    conn = raw()
    conn.send(b"GET /r1/echo?old HTTP/1.0\r\n\r\n")
    assert conn.read_response().status == 200


def test_http_1_0_with_transfer_encoding_is_answered_then_closed(server, raw, app) -> None:
    """RFC 9112 §6.1: a server that receives an HTTP/1.0 message with Transfer-Encoding MUST treat its framing as
    faulty and close the connection after processing it, even when it asks for keep-alive (§6.3 says why: a
    body whose length is in doubt lets what follows it be read as a smuggled request). The request pipelined behind
    it is never answered."""
    conn = raw()
    conn.send(b"POST /r1/echo?te HTTP/1.0\r\nHost: t\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n"
              b"3\r\nabc\r\n0\r\n\r\n" + get("/r1/echo?smuggled"))  # fmt: skip
    response = conn.read_response()
    assert response.status == 200 and response.json()["body"] == "abc"
    assert response.headers["connection"] == "close"
    assert conn.at_eof()
    assert [c["query"] for c in app.r1_calls] == ["te"]


def test_http_1_0_keep_alive_without_transfer_encoding_stays_open(server, raw) -> None:
    conn = raw()
    conn.send(b"GET /r1/echo?a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    assert conn.read_response().status == 200
    conn.send(b"GET /r1/echo?b HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    assert conn.read_response().json()["query"] == "b"


# -- back-pressure (issue 13 finding 6) ------------------------------------------------------------------------


def test_pipelined_answers_the_client_does_not_read_wait_for_it(server, raw, app) -> None:
    """A client pipelines many requests and reads nothing: the server stops starting answers (and reading) while
    its write buffer is above the high-water mark, instead of buffering every answer in memory. Once the client
    reads, every answer arrives, in order."""
    count = 800  # 800 x 32 KiB = 25 MiB of answers, were they all made at once
    conn = raw(timeout=30)
    conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)  # keep the kernel's share small and fixed
    conn.send(b"".join(get(f"/r1/lots?{i}") for i in range(count)))
    time.sleep(1.0)  # (the old code made all 800 answers well within this)
    buffered = server.run(_write_buffers(server.server))
    made = len(app.r1_calls)
    # the kernel's socket buffers (a few MiB on loopback) take some answers; the process's own buffer stays small
    assert max(buffered) < 1024 * 1024, (buffered, made)
    assert made < count // 2, f"{made} answers made for a client that reads nothing"
    for i in range(count):
        response = conn.read_response()
        assert response.status == 200 and response.headers["x-query"] == str(i) and response.body == BIG
    assert len(app.r1_calls) == count


async def _write_buffers(server: Server) -> list[int]:
    return [c.transport.get_write_buffer_size() for c in server.connections if c.transport is not None] or [0]
