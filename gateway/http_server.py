"""The gateway's HTTP/1.1 server: one asyncio protocol per connection, httptools (llhttp) parsing the requests.

`/r1/...` calls (percent-encoded or not) go straight to `GatewayApp.r1` with no ASGI scope or message dicts; every
other path (health, metrics, the operations API) goes to the same app through a small ASGI bridge. Measured on the
project's 2-core machine, a proxy of this shape answered three times what granian + pyreqwest did (see
gateway/upstream.py), and the server is the part of the hot path that runs on every byte.

What a server on the open network owes its clients, and how it is kept here:
- bounded heads (MAX_HEAD_BYTES, MAX_HEADERS: 431) and bodies (the app's limit: 413, answered and audited as soon
  as the declared or received size passes it, without reading the rest);
- time limits by a one-second sweep, not a timer per request: HEADER_TIMEOUT for a head to arrive (slow-loris),
  BODY_TIMEOUT for a body, KEEPALIVE_TIMEOUT for an idle connection;
- malformed HTTP is answered 400 and the connection closed, and so is a request target with a fragment (`#`) or a
  request with no Host (HTTP/1.1) or two (RFC 9112 §3.2), these through the app on /r1 so that they are audited; an
  HTTP/1.0 request with Transfer-Encoding is answered and the connection closed (RFC 9112 §6.1);
- pipelined requests are answered in order, one at a time, and reading pauses while PIPELINE_LIMIT of them wait;
- back-pressure: while the transport's write buffer is above its high-water mark (a client not reading its answers)
  reading pauses and no further request is started, so a connection holds at most the buffer and one answer; a
  client that reads nothing for KEEPALIVE_TIMEOUT is cut off;
- with a TLS context (the default; `--insecure-http` serves without) every connection is TLS 1.3 (`TLSConnection`,
  gateway/tls_server.py): plaintext on the port is answered 400 `tls-required`, a failed handshake is counted and
  closed, and the client's certificate (`pki.Peer`, read once per connection) goes with each request to the app.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import logging
import os
import ssl
import time
from collections import deque
from collections.abc import Iterable, MutableMapping
from email.utils import formatdate
from typing import Any, Protocol, cast
from urllib.parse import unquote

import httptools

from gateway.tls_server import HANDSHAKE_RECORD, TLSSession, TLSTransport, describe, refusal_reason, refused
from gateway.xroad_errors import render
from lienthong.background import stop_task
from lienthong.pki import Peer
from lienthong.problem import Problem

log = logging.getLogger("lienthong.gateway.http")

MAX_HEAD_BYTES = 64 * 1024
MAX_HEADERS = 200
HEADER_TIMEOUT = 10.0
BODY_TIMEOUT = 30.0
KEEPALIVE_TIMEOUT = 75.0
PIPELINE_LIMIT = 16
SHUTDOWN_GRACE = 10.0
LINGER_SECONDS = 2.0
# PR-REST §4.3: of several X-Road-Client headers the security server uses the last one
LAST_WINS = frozenset({"x-road-client"})

Message = MutableMapping[str, Any]


class Reply(Protocol):
    status: int
    headers: list[tuple[str, str]]  # a repeated field (Set-Cookie) is several entries
    body: bytes


class App(Protocol):
    """What the server needs of the gateway app."""

    body_limit: int

    async def r1(
        self, method: str, raw_path: str, query: bytes, headers: dict[str, str], body: bytes, started: float,
        body_refused: Problem | None, peer: Peer | None,
    ) -> Reply: ...  # fmt: skip

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None: ...


def _status_line(status: int) -> bytes:
    try:
        reason = http.HTTPStatus(status).phrase
    except ValueError:
        reason = ""
    return f"HTTP/1.1 {status} {reason}\r\n".encode("latin-1")


_STATUS_LINES = {status.value: _status_line(status.value) for status in http.HTTPStatus}


def status_line(status: int) -> bytes:
    line = _STATUS_LINES.get(status)
    return line if line is not None else _status_line(status)


class _Clock:
    """The Date header, formatted once a second; one per worker process."""

    def __init__(self) -> None:
        self.second = 0
        self.header = b""

    def date(self) -> bytes:
        now = int(time.time())
        if now != self.second:
            self.second = now
            self.header = b"date: " + formatdate(now, usegmt=True).encode() + b"\r\n"
        return self.header


CLOCK = _Clock()


def response_bytes(
    status: int, headers: Iterable[tuple[str, str]], body: bytes, *, keep_alive: bool, with_body: bool = True
) -> bytes:
    """A whole HTTP/1.1 response framed by Content-Length."""
    head = "".join(f"{name}: {value}\r\n" for name, value in headers)
    parts = [status_line(status), head.encode("latin-1", "replace"), b"content-length: ", str(len(body)).encode(),
             b"\r\n", CLOCK.date()]  # fmt: skip
    if not keep_alive:
        parts.append(b"connection: close\r\n")
    parts.append(b"\r\n")
    if with_body:
        parts.append(body)
    return b"".join(parts)


def is_r1(path: bytes) -> bool:
    """An `/r1/` call, spelled plainly or percent-encoded (`/%721/`): both take the direct route, with the raw path,
    so that a refused one is audited whatever its spelling."""
    return (
        path.startswith(b"/r1/")
        or path == b"/listClients"  # X-Road's path for listClients (PR-META §2), answered like /r1/listClients
        or (b"%" in path and unquote(path.decode("latin-1")).startswith("/r1/"))
    )


def problem_bytes(problem: Problem, request: Request | None = None) -> bytes:
    """The server's own refusal (the connection closes after it), in X-Road's shape as the request's Accept asks
    (gateway/xroad_errors.py), like every refusal on /r1."""
    accept = request.headers.get("accept", "") if request is not None else ""
    request_id = os.urandom(16).hex()
    status, headers, body = render(problem, accept=accept, tracking_id=request_id)
    headers["x-road-request-id"] = request_id
    return response_bytes(status, headers.items(), body, keep_alive=False)


class Request:
    __slots__ = ("body", "chunks", "expect_continue", "head_done", "headers", "hosts", "http10", "keep_alive",
                 "method", "raw_headers", "refused", "size", "started", "target")  # fmt: skip

    def __init__(self, started: float) -> None:
        self.started = started
        self.target = b""
        self.method = "GET"
        self.headers: dict[str, str] = {}
        self.raw_headers: list[tuple[bytes, bytes]] = []  # as received, repeated ones too, for the ASGI bridge
        self.chunks: list[bytes] = []
        self.size = 0
        self.body = b""
        self.keep_alive = True
        self.http10 = False
        self.head_done = False  # after this, on_header gets trailer fields, which are dropped (RFC 9110 §6.5.1)
        self.expect_continue = False  # a 100 Continue is owed once the answers ahead of this one are out
        self.refused: Problem | None = None
        self.hosts = 0  # Host field lines seen: RFC 9112 §3.2 wants exactly one


class Connection(asyncio.Protocol):
    def __init__(self, server: Server) -> None:
        self.server = server
        self.app = server.app
        self.loop = server.loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.request: Request | None = None  # being parsed
        self.queue: deque[Request] = deque()  # parsed, waiting their turn
        self.active: Request | None = None  # being answered
        self.head_bytes = 0
        self.deadline = 0.0
        self.closing = False
        self.paused = False  # reading paused for back-pressure (pipeline full or write buffer full)
        self.write_blocked = False  # the write buffer is above its high-water mark
        self.blocked_at = 0.0
        self.client: tuple[str, int] | None = None
        self.peer: Peer | None = None  # the TLS client's verified certificate, read once per connection
        self._writable: asyncio.Event | None = None
        self._gone: asyncio.Future[None] | None = None

    # -- asyncio.Protocol ----------------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's
        peer = transport.get_extra_info("peername")
        self.client = (str(peer[0]), int(peer[1])) if isinstance(peer, tuple) and len(peer) >= 2 else None
        self.deadline = self.loop.time() + KEEPALIVE_TIMEOUT
        if len(self.server.connections) >= self.server.max_connections:
            self.transport.abort()  # over the bound: refuse at once rather than let idle sockets starve real clients
            return
        self.server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.transport = None
        self.server.connections.discard(self)
        if self._gone is not None and not self._gone.done():
            self._gone.set_result(None)
        if self._writable is not None:
            self._writable.set()

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._no_upgrade()
        except httptools.HttpParserError as exc:
            if not self.closing:
                self._refuse_now(_malformed(exc))

    def pause_writing(self) -> None:
        self.write_blocked = True
        self.blocked_at = self.loop.time()
        if self._writable is None:
            self._writable = asyncio.Event()
        self._writable.clear()
        self._reading()

    def resume_writing(self) -> None:
        self.write_blocked = False
        if self._writable is not None:
            self._writable.set()
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        request = self.request
        if request is not None:  # a head or body we stopped reading: its time limit starts again
            wait = BODY_TIMEOUT if request.head_done else HEADER_TIMEOUT
            self.deadline = max(self.deadline, self.loop.time() + wait)
        if self.active is None and self.queue:
            self._next()
        else:
            self._reading()

    # -- httptools callbacks -------------------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        now = self.loop.time()
        self.request = Request(time.time())
        self.head_bytes = 0
        self.deadline = now + HEADER_TIMEOUT

    def on_url(self, url: bytes) -> None:
        assert self.request is not None
        self.request.target += url
        self._count_head(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        request = self.request
        assert request is not None
        if request.head_done:
            return  # a trailer field: never merged, so a chunked body's trailer can never pose as a header
        self._count_head(len(name) + len(value) + 4)
        if len(request.raw_headers) >= MAX_HEADERS:
            raise _TooLarge(f"more than {MAX_HEADERS} header fields")
        name = name.lower()
        if name == b"host":
            request.hosts += 1
        request.raw_headers.append((name, value))
        key, text = name.decode("latin-1"), value.decode("latin-1")
        earlier = request.headers.get(key)
        if earlier is not None and key not in LAST_WINS:
            # RFC 9110 §5.3: repeated field lines are one comma-separated list (a Cookie's pairs join with "; ")
            text = earlier + ("; " if key == "cookie" else ", ") + text
        request.headers[key] = text

    def on_headers_complete(self) -> None:
        request = self.request
        assert request is not None
        parser = self.parser
        request.method = parser.get_method().decode("ascii")
        request.keep_alive = parser.should_keep_alive()
        request.http10 = parser.get_http_version() == "1.0"
        request.head_done = True
        self.deadline = self.loop.time() + BODY_TIMEOUT
        refusal = _refusal_of_head(request)
        if refusal is not None:
            self._refuse_request(request, refusal)
            return
        if request.http10 and "transfer-encoding" in request.headers:
            request.keep_alive = False  # RFC 9112 §6.1: the framing is suspect, so nothing after it is read
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.app.body_limit:
            self._body_too_large(request)
            return
        if request.headers.get("expect", "").lower() == "100-continue":
            request.expect_continue = True
            self._continue()

    def on_body(self, body: bytes) -> None:
        request = self.request
        if request is None or request.refused is not None:
            return
        request.size += len(body)
        if request.size > self.app.body_limit:
            self._body_too_large(request)
            return
        request.chunks.append(body)

    def on_message_complete(self) -> None:
        request = self.request
        self.request = None
        if request is None or request.refused is not None:
            return  # a refused body was answered already
        chunks = request.chunks
        request.body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self.deadline = float("inf")  # the app bounds its own upstream calls
        self._enqueue(request)

    # -- answering -----------------------------------------------------------------------------------------------

    def _continue(self) -> None:
        """Send the 100 Continue the request being read is owed, once no answer ahead of it is still to come."""
        request = self.request
        if request is None or not request.expect_continue or self.active is not None or self.queue:
            return
        request.expect_continue = False
        if self.transport is not None:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def _no_upgrade(self) -> None:
        """llhttp has completed the request that asked for an upgrade; what follows it is not HTTP/1.1. Answer that
        request as an ordinary one (a server may ignore Upgrade, RFC 9110 §7.8) and close after it."""
        self.closing = True
        last = self.queue[-1] if self.queue else self.active
        if last is None:
            problem = Problem(400, "invalid-parameter", "protocol upgrades are not served", field="Upgrade")
            self._refuse_now(problem)
            return
        last.keep_alive = False
        if self.transport is not None:
            self.transport.pause_reading()

    def _count_head(self, n: int) -> None:
        self.head_bytes += n
        if self.head_bytes > MAX_HEAD_BYTES:
            raise _TooLarge(f"the request head is over {MAX_HEAD_BYTES} bytes")

    def _body_too_large(self, request: Request) -> None:
        detail = f"the request body is over the limit of {self.app.body_limit} bytes"
        self._refuse_request(request, Problem(413, "body-too-large", detail, field="body"))

    def _refuse_request(self, request: Request, problem: Problem) -> None:
        """Answer `problem` through the app (so that an /r1 refusal is audited) and stop reading; the connection
        closes after the answer."""
        request.refused = problem
        request.keep_alive = False
        request.chunks = []
        self.closing = True
        if self.transport is not None:
            self.transport.pause_reading()
        self._enqueue(request)

    def _enqueue(self, request: Request) -> None:
        if self.active is None:
            self._start(request)
            return
        self.queue.append(request)
        if len(self.queue) >= PIPELINE_LIMIT:
            self._reading()

    def _next(self) -> None:
        self._start(self.queue.popleft())
        self._reading()

    def _reading(self) -> None:
        """Read while the client reads its answers and few requests wait; pause otherwise (back-pressure)."""
        transport = self.transport
        if transport is None or self.closing:
            return  # a closing connection pauses or lingers on its own terms
        if self.write_blocked or len(self.queue) >= PIPELINE_LIMIT:
            if not self.paused:
                self.paused = True
                transport.pause_reading()
        elif self.paused and len(self.queue) < PIPELINE_LIMIT // 2:
            self.paused = False
            transport.resume_reading()

    def _start(self, request: Request) -> None:
        self.active = request
        self.server.in_flight += 1
        self.loop.create_task(self._answer(request))

    async def _answer(self, request: Request) -> None:
        try:
            path, _, query = request.target.partition(b"?")
            if is_r1(path):  # a refused body goes to the app too, which audits the refusal
                reply = await self.app.r1(request.method, path.decode("latin-1"), query, request.headers,
                                          request.body, request.started, request.refused, self.peer)  # fmt: skip
                self._write(request, reply.status, reply.headers, reply.body)
            elif request.refused is not None:
                if self.transport is not None:
                    self.transport.write(problem_bytes(request.refused, request))
            else:
                await self._asgi(request, path, query)
        except Exception:
            log.exception("unexpected error answering %s %r", request.method, request.target[:200])
            request.keep_alive = False
            # whatever the write does, _finished must run: it alone closes a connection that owes a close
            if self.transport is not None and not self.transport.is_closing():
                with contextlib.suppress(Exception):
                    self.transport.write(problem_bytes(Problem(500, "internal-error", "the gateway failed"), request))
        finally:
            self.server.in_flight -= 1
        self._finished(request)

    def _finished(self, request: Request) -> None:
        self.active = None
        transport = self.transport
        if transport is None:
            return
        if request.refused is not None:
            self._linger(transport)
            return
        if not request.keep_alive:
            self.closing = True
            transport.close()
            return
        if self.queue:
            if not self.write_blocked:
                self._next()
            return  # else resume_writing starts the next once the client has read enough
        if self.request is None:
            self.deadline = self.loop.time() + KEEPALIVE_TIMEOUT
        else:
            self._continue()

    def _write(self, request: Request, status: int, headers: Iterable[tuple[str, str]], body: bytes) -> None:
        if self.transport is not None:
            data = response_bytes(status, headers, body, keep_alive=request.keep_alive,
                                  with_body=request.method != "HEAD")  # fmt: skip
            self.transport.write(data)

    def _refuse_now(self, problem: Problem) -> None:
        """A request that cannot be parsed: answer at once (after any answer in progress) and close."""
        self.closing = True
        transport = self.transport
        if transport is None:
            return
        if self.active is None:
            transport.write(problem_bytes(problem, self.request))
            self._linger(transport)
        else:
            transport.pause_reading()
            self.queue.append(_refusal(problem))

    def _linger(self, transport: asyncio.Transport) -> None:
        """Close after a refusal the way nginx does: stop writing, read and drop what the client still sends for a
        moment, then close. Closing at once with unread data would reset the connection, and the client's stack
        may then drop the answer before the client has read it."""
        self.queue.clear()
        self.deadline = self.loop.time() + LINGER_SECONDS
        if transport.can_write_eof():
            transport.write_eof()
        transport.resume_reading()

    # -- the ASGI bridge for everything but /r1 ------------------------------------------------------------------

    async def _asgi(self, request: Request, raw_path: bytes, query: bytes) -> None:
        server = self.server
        scope: dict[str, Any] = {
            "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
            "method": request.method, "scheme": server.scheme, "path": unquote(raw_path.decode("latin-1")),
            "raw_path": raw_path, "query_string": query, "root_path": "", "headers": request.raw_headers,
            "client": self.client, "server": server.address,
        }  # fmt: skip
        sent_body = False
        started: dict[str, Any] = {}
        chunked = False

        async def receive() -> Message:
            nonlocal sent_body
            if not sent_body:
                sent_body = True
                return {"type": "http.request", "body": request.body, "more_body": False}
            if self._gone is None:
                self._gone = self.loop.create_future()
                if self.transport is None:
                    self._gone.set_result(None)
            await self._gone
            return {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            nonlocal chunked
            kind = message["type"]
            if kind == "http.response.start":
                started.update(status=int(message["status"]), headers=list(message.get("headers", [])))
                return
            if kind != "http.response.body" or not started or started.get("done"):
                return
            body: bytes = message.get("body", b"")
            more = bool(message.get("more_body", False))
            transport = self.transport
            if transport is None:
                return
            if "sent_head" not in started:
                started["sent_head"] = True
                names = {bytes(k).lower() for k, _ in started["headers"]}
                head = [status_line(started["status"])]
                head += [bytes(k) + b": " + bytes(v) + b"\r\n" for k, v in started["headers"]]
                if b"content-length" not in names:
                    if more and request.http10:
                        request.keep_alive = False  # no chunked coding toward HTTP/1.0: the close ends the body
                    elif more:
                        chunked = True
                        head.append(b"transfer-encoding: chunked\r\n")
                    else:
                        head.append(b"content-length: " + str(len(body)).encode() + b"\r\n")
                if b"date" not in names:
                    head.append(CLOCK.date())
                if not request.keep_alive:
                    head.append(b"connection: close\r\n")
                head.append(b"\r\n")
                transport.write(b"".join(head))
            if request.method != "HEAD" and body:
                transport.write(b"%x\r\n%s\r\n" % (len(body), body) if chunked else body)
            if not more:
                started["done"] = True
                if chunked and request.method != "HEAD":
                    transport.write(b"0\r\n\r\n")
            if self._writable is not None and not self._writable.is_set():
                await self._writable.wait()

        await self.app(scope, receive, send)
        if not started.get("done"):
            if "sent_head" in started:
                request.keep_alive = False  # a response cut short cannot be framed: close
            elif self.transport is not None:
                self.transport.write(problem_bytes(Problem(500, "internal-error", "no response from the app"), request))
                request.keep_alive = False

    def expire(self, now: float) -> None:
        """Called by the server's sweep: close a connection whose head, body or idle time ran out, or whose client
        has read none of its answers for KEEPALIVE_TIMEOUT."""
        if self.transport is None:
            return
        if self.write_blocked:  # our reading is paused, so only the client's own stall counts (or a linger's end)
            limit = self.blocked_at + KEEPALIVE_TIMEOUT
            if now >= (min(limit, self.deadline) if self.closing else limit):
                self.closing = True
                self.transport.abort()  # close() would wait to flush a buffer this client does not read
            return
        if now < self.deadline:
            return
        if not self.closing and self.active is None and self.request is not None:
            problem = Problem(408, "invalid-parameter", "the request did not arrive in time", field="request")
            with contextlib.suppress(Exception):
                self.transport.write(problem_bytes(problem, self.request))
        self.closing = True
        self.transport.close()

    def abort(self) -> None:
        """Drop the connection without a goodbye (its close failed)."""
        self.closing = True
        transport = self.transport
        if transport is not None:
            with contextlib.suppress(Exception):
                transport.abort()


def _refusal(problem: Problem) -> Request:
    """A parse failure waiting behind an answer in progress (pipelining): answered like any refused request, by the
    server itself, as its target is no /r1 call."""
    request = Request(time.time())
    request.refused, request.keep_alive, request.target = problem, False, b"/"
    return request


def _refusal_of_head(request: Request) -> Problem | None:
    """What RFC 9112 §3.2 refuses in a complete head: a target with a fragment, no Host in HTTP/1.1, two Hosts."""
    if b"#" in request.target:
        return Problem(400, "invalid-path", "the request target has a fragment ('#'), which HTTP does not allow "
                       "(RFC 9112 §3.2)", field="path")  # fmt: skip
    if request.hosts > 1 or (request.hosts == 0 and not request.http10):
        detail = "two Host header fields" if request.hosts else "no Host header field"
        return Problem(400, "invalid-parameter", f"the request has {detail}: exactly one is required (RFC 9112 §3.2)",
                       field="Host")  # fmt: skip
    return None


class _TooLarge(Exception):
    pass


def _malformed(exc: Exception) -> Problem:
    cause = exc.__cause__ or exc.__context__
    if isinstance(cause, _TooLarge):
        return Problem(431, "invalid-parameter", str(cause), field="headers")
    return Problem(400, "invalid-body" if "chunk" in str(exc).lower() else "invalid-parameter",
                   "the request is not well-formed HTTP/1.1", field="request")  # fmt: skip


class TLSConnection(Connection):
    """A connection on a TLS port: the first byte decides (a TLS handshake record, or a plaintext request that is
    told to use https://), the handshake runs in memory, and the HTTP connection then reads decrypted bytes and
    writes through a `TLSTransport`. The handshake has HEADER_TIMEOUT to finish, as a request head has."""

    def __init__(self, server: Server) -> None:
        super().__init__(server)
        self.session: TLSSession | None = None
        self.secure = False  # handshake done
        self.peer_expires = 0.0  # time.time() at which the client certificate expires (0: none was sent)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.deadline = self.loop.time() + HEADER_TIMEOUT

    def data_received(self, data: bytes) -> None:
        if self.secure:
            plain, closed = cast(TLSSession, self.session).decrypt(data)
            if plain:
                super().data_received(plain)
            if closed and self.transport is not None and self.active is None and not self.queue:
                self.closing = True
                self.transport.close()
            return
        if self.closing or self.transport is None or not data:
            return
        session = self.session
        if session is None:
            if data[0] != HANDSHAKE_RECORD:
                self._plaintext()
                return
            session = self.session = TLSSession(cast(ssl.SSLContext, self.server.tls), self.transport)
        try:
            done = session.handshake(data)
        except ssl.SSLError as exc:
            refused(refusal_reason(exc), describe(exc))
            self.closing = True
            if self.transport is not None:
                self.transport.close()
            return
        if done:
            self.secure = True
            self.peer = Peer.of(session.sslobj)
            self.peer_expires = self.peer.not_after.timestamp() if self.peer is not None else 0.0
            self.transport = cast(asyncio.Transport, TLSTransport(session))
            self.deadline = self.loop.time() + KEEPALIVE_TIMEOUT
            self.data_received(b"")  # application data that came with the client's Finished

    def _start(self, request: Request) -> None:
        # a kept-alive connection does not outlive its client certificate: the request after its expiry is refused
        # (through the app, so it is audited) and the connection closes; the next handshake is refused as expired
        if self.peer_expires and request.started >= self.peer_expires and request.refused is None:
            request.refused = Problem(401, "client-certificate-required", "the client certificate has expired: "
                                      "connect again with a valid one", field="certificate")  # fmt: skip
            request.keep_alive = False
            self.closing = True
        super()._start(request)

    def _plaintext(self) -> None:
        """Plain HTTP on a TLS port: a plain 400 that says where to go, then close."""
        refused("plaintext")
        name = cast(asyncio.Transport, self.transport).get_extra_info("sockname")
        where = _authority(name) if isinstance(name, tuple) else "host:port"
        detail = f"this port speaks HTTPS only: use https://{where}/"
        self._refuse_now(Problem(400, "tls-required", detail, field="scheme"))


def _authority(name: tuple[Any, ...]) -> str:
    host = str(name[0])
    return f"[{host}]:{name[1]}" if ":" in host else f"{host}:{name[1]}"


class Server:
    """Connections of one worker, and the sweep that enforces their time limits."""

    def __init__(
        self, app: App, loop: asyncio.AbstractEventLoop, max_connections: int = 16384,
        tls: ssl.SSLContext | None = None,
    ) -> None:  # fmt: skip
        self.app = app
        self.loop = loop
        self.max_connections = max_connections
        self.tls = tls  # None: plain HTTP (--insecure-http)
        self.scheme = "https" if tls is not None else "http"
        self.connections: set[Connection] = set()
        self.in_flight = 0  # answers being made, also those whose client has gone
        self.address: tuple[str, int] | None = None
        self._server: asyncio.base_events.Server | None = None
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self, sock: Any) -> None:
        kind = TLSConnection if self.tls is not None else Connection
        self._server = await self.loop.create_server(lambda: kind(self), sock=sock, backlog=2048)
        name = sock.getsockname()
        self.address = (str(name[0]), int(name[1]))
        self._sweeper = self.loop.create_task(self._sweep())

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            now = self.loop.time()
            for conn in list(self.connections):
                try:
                    conn.expire(now)
                except Exception:  # one connection's failure must not end the sweep: it alone closes the lingering
                    log.exception("closing a connection failed; aborting it")
                    conn.abort()

    async def stop(self) -> None:
        """Stop accepting, let calls in flight finish (up to SHUTDOWN_GRACE), then close what is left."""
        if self._server is not None:
            self._server.close()
        await stop_task(self._sweeper)
        self._sweeper = None
        give_up = self.loop.time() + SHUTDOWN_GRACE
        while self.in_flight and self.loop.time() < give_up:
            for conn in self.connections:
                if conn.active is None and conn.transport is not None:
                    conn.transport.close()
            await asyncio.sleep(0.05)
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.close()
