"""gateway.upstream.UpstreamClient against small raw HTTP/1.1 servers written here (asyncio streams on 127.0.0.1,
each counting the connections it accepts and recording the requests it reads). Nothing of the client, its pool or
its breakers is mocked; each test runs in its own uvloop, as the gateway's workers do.

Covered: pooled reuse, the idle limit, the Host header and hop-by-hop removal, chunked bodies, `Connection: close`
and an upstream closing an idle connection, the one retry of an idempotent call on a stale pooled connection (and
none for POST), garbage (502), no answer (504 within about the timeout), a refused connection (502), the breaker
(503 circuit-open, then a half-open probe), and HEAD. The last tests pin down bugs found while
writing these tests.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import pytest
import uvloop

from gateway import upstream
from gateway.breaker import Breakers
from gateway.upstream import UpstreamClient
from lienthong.problem import Problem
from lienthong.redis_connection import free_port


def run(coro, timeout: float = 10.0):
    async def bounded():
        return await asyncio.wait_for(coro, timeout)

    return uvloop.run(bounded())


@dataclass
class Seen:
    """One request as the upstream read it."""

    connection: int  # 1-based, in order of acceptance
    number: int  # 1-based, on its connection
    method: str
    target: str
    headers: dict[str, str]  # lower-case names
    names: list[str]  # as sent, in order
    body: bytes


# handler(request, reader, writer) -> keep the connection open?
Handler = Callable[[Seen, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[bool]]


@dataclass
class Upstream:
    handler: Handler
    connections: int = 0
    requests: list[Seen] = field(default_factory=list)
    server: asyncio.AbstractServer | None = None
    port: int = 0

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> Upstream:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        index, number = self.connections, 0
        try:
            await self._loop(reader, writer, index, number)
        except asyncio.CancelledError:
            pass  # the test's loop is ending
        finally:
            writer.close()

    async def _loop(self, reader, writer, index: int, number: int) -> None:
        """Read requests one after another and hand each to the handler."""
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            lines = head[:-4].decode("latin-1").split("\r\n")
            method, target, _version = lines[0].split(" ")
            names, headers = [], {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                names.append(name)
                headers[name.lower()] = value.strip()
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            number += 1
            seen = Seen(index, number, method, target, headers, names, body)
            self.requests.append(seen)
            if not await self.handler(seen, reader, writer):
                return


def answer(status: int = 200, body: bytes = b"", headers: tuple[str, ...] = ()) -> bytes:
    head = [f"HTTP/1.1 {status} X", *headers]
    if not any(h.lower().startswith(("content-length:", "transfer-encoding:")) for h in headers):
        head.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


async def echo(seen: Seen, reader, writer) -> bool:
    """Content-Length framing, keep-alive; the body says which request on which connection this was."""
    writer.write(answer(200, f"{seen.method} {seen.target} c{seen.connection} n{seen.number} {seen.body!r}".encode()))
    await writer.drain()
    return True


def client(failures_to_open: int = 5, open_seconds: float = 30.0) -> UpstreamClient:
    return UpstreamClient(Breakers(failures_to_open, open_seconds))


async def get(c: UpstreamClient, base: str, target: str = "/x", method: str = "GET", body: bytes = b"",
              headers: dict[str, str] | None = None, timeout_ms: int = 3000):  # fmt: skip
    return await c.call(method=method, base=base, target=target, headers=headers or {}, body=body,
                        timeout_ms=timeout_ms, what="the test upstream")  # fmt: skip


async def problem_of(awaitable: Awaitable[object]) -> Problem:
    with pytest.raises(Problem) as caught:
        await awaitable
    return caught.value


# -- pooling -------------------------------------------------------------------------------------------------------


def test_keep_alive_connection_is_pooled_and_reused() -> None:
    async def main():
        async with Upstream(echo) as up:
            c = client()
            bodies = [(await get(c, up.base, f"/p{i}?q={i}")).body for i in range(4)]
            await c.close()
            return up, bodies

    up, bodies = run(main())
    assert bodies == [f"GET /p{i}?q={i} c1 n{i + 1} b''".encode() for i in range(4)]
    assert up.connections == 1


def test_separate_pools_per_base() -> None:
    async def main():
        async with Upstream(echo) as one, Upstream(echo) as two:
            c = client()
            for _ in range(2):
                assert (await get(c, one.base)).status == 200
                assert (await get(c, two.base)).status == 200
            await c.close()
            return one, two

    one, two = run(main())
    assert (one.connections, two.connections) == (1, 1)
    assert len(one.requests) == len(two.requests) == 2


def test_concurrent_calls_each_get_a_connection_and_then_share_the_pool() -> None:
    async def slow_echo(seen, reader, writer) -> bool:
        await asyncio.sleep(0.1)
        return await echo(seen, reader, writer)

    async def main():
        async with Upstream(slow_echo) as up:
            c = client()
            first = await asyncio.gather(*(get(c, up.base, f"/{i}") for i in range(3)))
            second = await asyncio.gather(*(get(c, up.base, f"/{i}") for i in range(3)))
            await c.close()
            return up, first + second

    up, responses = run(main())
    assert all(r.status == 200 for r in responses)
    assert up.connections == 3  # three at once need three connections; the second round reuses them
    assert sorted(r.connection for r in up.requests[3:]) == [1, 2, 3]


def test_connection_idle_past_idle_timeout_is_not_reused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(upstream, "IDLE_TIMEOUT", 0.2)

    async def main():
        async with Upstream(echo) as up:
            c = client()
            await get(c, up.base)
            await get(c, up.base)  # at once: reused
            await asyncio.sleep(0.3)  # the upstream would still take it, but it is too old to trust
            await get(c, up.base)
            await c.close()
            return up

    up = run(main())
    assert [(r.connection, r.number) for r in up.requests] == [(1, 1), (1, 2), (2, 1)]


# -- what is sent and what comes back ------------------------------------------------------------------------------


def test_host_header_sent_and_hop_by_hop_headers_removed() -> None:
    async def chatty(seen, reader, writer) -> bool:
        writer.write(answer(200, b"hello", (
            "Content-Type: text/plain", "X-Custom: One", "Connection: keep-alive", "Keep-Alive: timeout=5",
            "Proxy-Authenticate: Basic", "Trailer: X-T", "Upgrade: h2c", "Set-Cookie: a=1", "Set-Cookie: b=2",
            "Content-Length: 5",
        )))  # fmt: skip
        await writer.drain()
        return True

    async def main():
        async with Upstream(chatty) as up:
            c = client()
            response = await get(c, up.base, "/a/b?c=d", method="POST", body=b'{"k":1}',
                                 headers={"content-type": "application/json", "x-road-id": "abc"})  # fmt: skip
            again = await get(c, up.base)
            await c.close()
            return up, response, again

    up, response, again = run(main())
    assert response.status == 200 and response.body == b"hello"
    assert response.headers == [("content-type", "text/plain"), ("x-custom", "One"), ("set-cookie", "a=1"),
                                ("set-cookie", "b=2")]  # fmt: skip
    seen = up.requests[0]
    assert (seen.method, seen.target, seen.body) == ("POST", "/a/b?c=d", b'{"k":1}')
    assert seen.headers["host"] == f"127.0.0.1:{up.port}"
    assert seen.names[0].lower() == "host"
    assert seen.headers["content-type"] == "application/json" and seen.headers["x-road-id"] == "abc"
    assert seen.headers["content-length"] == "7"
    assert again.headers == response.headers  # a fresh list per response, not the connection's last one
    assert up.connections == 1  # Connection: keep-alive from the upstream leaves it pooled
    get_seen = up.requests[1]
    assert "content-length" not in get_seen.headers  # a GET without a body declares none


def test_empty_post_declares_content_length_zero() -> None:
    async def main():
        async with Upstream(echo) as up:
            c = client()
            response = await get(c, up.base, method="POST")
            await c.close()
            return up, response

    up, response = run(main())
    assert response.status == 200
    assert up.requests[0].headers["content-length"] == "0"


def test_chunked_body_is_decoded() -> None:
    async def chunked(seen, reader, writer) -> bool:
        writer.write(answer(201, headers=("Transfer-Encoding: chunked", "Content-Type: text/plain")))
        for part in (b"5\r\nhello\r\n", b"1;ext=y\r\n,\r\n", b"6\r\n world\r\n"):
            writer.write(part)
            await writer.drain()
            await asyncio.sleep(0.01)  # in separate packets
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        return True

    async def main():
        async with Upstream(chunked) as up:
            c = client()
            first = await get(c, up.base)
            second = await get(c, up.base)
            await c.close()
            return up, first, second

    up, first, second = run(main())
    assert first.status == 201
    assert first.body == second.body == b"hello, world"
    assert first.headers == [("content-type", "text/plain")]  # no transfer-encoding
    assert up.connections == 1  # a chunked answer ends cleanly: the connection goes back to the pool


def test_statuses_pass_through_unchanged() -> None:
    async def teapot(seen, reader, writer) -> bool:
        writer.write(answer(418, b'{"no":"coffee"}', ("Content-Type: application/problem+json",)))
        await writer.drain()
        return True

    async def main():
        async with Upstream(teapot) as up:
            c = client()
            responses = [await get(c, up.base) for _ in range(3)]
            await c.close()
            return c, up, responses

    c, up, responses = run(main())
    assert [r.status for r in responses] == [418] * 3 and responses[0].body == b'{"no":"coffee"}'
    assert c.breakers.get(up.base).failures == 0  # an HTTP error is an answer, not a transport failure


# -- the upstream closing ------------------------------------------------------------------------------------------


def test_connection_close_from_upstream_means_a_new_connection() -> None:
    async def once(seen, reader, writer) -> bool:
        writer.write(answer(200, f"c{seen.connection}".encode(), ("Connection: close",)))
        await writer.drain()
        await asyncio.sleep(0.2)  # the close itself comes late: the client must go by the header
        return False

    async def main():
        async with Upstream(once) as up:
            c = client()
            bodies = [(await get(c, up.base)).body for _ in range(3)]
            await c.close()
            return up, bodies

    up, bodies = run(main())
    assert bodies == [b"c1", b"c2", b"c3"]
    assert up.connections == 3


def test_upstream_closing_an_idle_connection_is_noticed() -> None:
    async def short_lived(seen, reader, writer) -> bool:
        await echo(seen, reader, writer)
        await asyncio.sleep(0.05)
        return False  # closed without saying so, as a server's idle timeout does

    async def main():
        async with Upstream(short_lived) as up:
            c = client()
            first = await get(c, up.base)
            await asyncio.sleep(0.3)
            second = await get(c, up.base)
            await c.close()
            return up, first, second

    up, first, second = run(main())
    assert first.body.startswith(b"GET /x c1 n1") and second.body.startswith(b"GET /x c2 n1")
    assert [r.connection for r in up.requests] == [1, 2]  # the closed one was not even tried


async def _stale_second_request(seen, reader, writer) -> bool:
    """Answer the first request of a connection; take the second and close without a byte of answer."""
    if seen.number == 1:
        return await echo(seen, reader, writer)
    return False


def test_stale_pooled_connection_is_retried_once_for_get() -> None:
    async def main():
        async with Upstream(_stale_second_request) as up:
            c = client()
            first = await get(c, up.base, "/one")
            second = await get(c, up.base, "/two")
            await c.close()
            return c, up, first, second

    c, up, first, second = run(main())
    assert first.body.startswith(b"GET /one c1 n1")
    assert second.status == 200 and second.body.startswith(b"GET /two c2 n1")
    assert [(r.connection, r.number, r.target) for r in up.requests] == [(1, 1, "/one"), (1, 2, "/two"),
                                                                         (2, 1, "/two")]  # fmt: skip
    assert c.breakers.get(up.base).failures == 0  # the retry succeeded: not a failure


@pytest.mark.parametrize("method", ["PUT", "DELETE"])
def test_stale_pooled_connection_is_retried_for_other_idempotent_methods(method: str) -> None:
    async def main():
        async with Upstream(_stale_second_request) as up:
            c = client()
            await get(c, up.base, "/one", method=method)
            second = await get(c, up.base, "/two", method=method)
            await c.close()
            return up, second

    up, second = run(main())
    assert second.status == 200 and up.connections == 2


def test_stale_pooled_connection_is_not_retried_for_post() -> None:
    async def main():
        async with Upstream(_stale_second_request) as up:
            c = client()
            await get(c, up.base, "/one", method="POST", body=b"1")
            problem = await problem_of(get(c, up.base, "/two", method="POST", body=b"2"))
            await c.close()
            return c, up, problem

    c, up, problem = run(main())
    assert problem.status == 502 and problem.code == "upstream-failed"
    assert "the test upstream" in problem.detail
    assert [(r.connection, r.target) for r in up.requests] == [(1, "/one"), (1, "/two")]  # sent once only
    assert up.connections == 1
    assert c.breakers.get(up.base).failures == 1


def test_no_retry_once_the_upstream_began_to_answer() -> None:
    async def half(seen, reader, writer) -> bool:
        if seen.number == 1:
            return await echo(seen, reader, writer)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
        await writer.drain()
        return False

    async def main():
        async with Upstream(half) as up:
            c = client()
            await get(c, up.base)
            problem = await problem_of(get(c, up.base))
            await c.close()
            return up, problem

    up, problem = run(main())
    assert problem.status == 502 and problem.code == "upstream-failed"
    assert up.connections == 1 and len(up.requests) == 2


# -- failures --------------------------------------------------------------------------------------------------------


def test_garbage_is_502_upstream_failed() -> None:
    async def garbage(seen, reader, writer) -> bool:
        writer.write(b"SSH-2.0-OpenSSH_9.6\r\nthis is not http\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.5)
        return False

    async def main():
        async with Upstream(garbage) as up:
            c = client()
            started = time.monotonic()
            problem = await problem_of(get(c, up.base))
            return problem, time.monotonic() - started

    problem, elapsed = run(main())
    assert problem.status == 502 and problem.code == "upstream-failed"
    assert isinstance(problem.__cause__, Exception)
    assert elapsed < 0.4  # failed on the bytes, not when the upstream closed


def test_no_answer_is_504_upstream_timeout_within_about_the_timeout() -> None:
    async def silent(seen, reader, writer) -> bool:
        await reader.read()  # until the client gives up and closes
        return False

    async def main():
        async with Upstream(silent) as up:
            c = client()
            started = time.monotonic()
            problem = await problem_of(get(c, up.base, timeout_ms=300))
            elapsed = time.monotonic() - started
            await asyncio.sleep(0.1)
            # the timed-out connection is not reused: the next call opens a new one
            problem_again = await problem_of(get(c, up.base, timeout_ms=100))
            return c, up, problem, elapsed, problem_again

    c, up, problem, elapsed, problem_again = run(main())
    assert problem.status == 504 and problem.code == "upstream-timeout"
    assert "300 ms" in problem.detail
    assert 0.28 <= elapsed < 0.8, elapsed
    assert problem_again.status == 504
    assert up.connections == 2
    assert c.breakers.get(up.base).failures == 2


def test_refused_connection_is_502() -> None:
    port = free_port()  # nothing listens there

    async def main():
        c = client()
        started = time.monotonic()
        problem = await problem_of(get(c, f"http://127.0.0.1:{port}"))
        return problem, time.monotonic() - started

    problem, elapsed = run(main())
    assert problem.status == 502 and problem.code == "upstream-failed"
    assert isinstance(problem.__cause__, OSError)
    assert elapsed < 1.0


def test_base_that_is_not_http_is_502() -> None:
    async def main():
        return await problem_of(get(client(), "ftp://127.0.0.1:21"))

    problem = run(main())
    assert problem.status == 502 and problem.code == "upstream-failed"


@pytest.mark.parametrize("base", ["http://127.0.0.1:99999", "http://127.0.0.1:port"])
def test_base_with_an_impossible_port_is_502(base: str) -> None:
    async def main():
        return await problem_of(get(client(), base))

    problem = run(main())
    assert problem.status == 502 and problem.code == "upstream-failed"


def test_a_path_in_the_base_prefixes_every_target() -> None:
    async def main():
        async with Upstream(echo) as up:
            c = client()
            response = await get(c, up.base + "/connector/", "/persons/1?x=2")
            await c.close()
            return up, response

    up, response = run(main())
    assert response.status == 200 and up.requests[0].target == "/connector/persons/1?x=2"


# -- the breaker -----------------------------------------------------------------------------------------------------


def test_breaker_opens_after_n_failures_and_answers_503_without_calling() -> None:
    async def garbage(seen, reader, writer) -> bool:
        writer.write(b"garbage\r\n\r\n")
        await writer.drain()
        return False

    async def main():
        async with Upstream(garbage) as up, Upstream(echo) as other:
            c = client(failures_to_open=3, open_seconds=30)
            failures = [await problem_of(get(c, up.base)) for _ in range(3)]
            opened = await problem_of(get(c, up.base))
            fine = await get(c, other.base)  # the breaker is per base
            return up, failures, opened, fine

    up, failures, opened, fine = run(main())
    assert [p.status for p in failures] == [502, 502, 502]
    assert opened.status == 503 and opened.code == "circuit-open"
    assert int(opened.headers["Retry-After"]) >= 1
    assert up.connections == 3  # the fourth call never reached the upstream
    assert fine.status == 200


def test_breaker_half_open_probe_closes_it_again() -> None:
    state = {"broken": True}

    async def flaky(seen, reader, writer) -> bool:
        if state["broken"]:
            writer.write(b"garbage\r\n\r\n")
            await writer.drain()
            return False
        return await echo(seen, reader, writer)

    async def main():
        async with Upstream(flaky) as up:
            c = client(failures_to_open=2, open_seconds=0.3)
            for _ in range(2):
                assert (await problem_of(get(c, up.base))).status == 502
            assert (await problem_of(get(c, up.base))).code == "circuit-open"
            state["broken"] = False
            await asyncio.sleep(0.35)
            probe = await get(c, up.base)  # half-open: one call goes through, and it succeeds
            after = [await get(c, up.base) for _ in range(2)]
            return c, up, probe, after

    c, up, probe, after = run(main())
    assert probe.status == 200 and all(r.status == 200 for r in after)
    assert c.breakers.get(up.base).state == "closed"
    assert len(up.requests) == 5


def test_a_cancelled_call_closes_its_connection_and_the_next_call_gets_a_fresh_one() -> None:
    closed = asyncio.Event()

    async def first_silent(seen, reader, writer) -> bool:
        if seen.connection == 1:
            await reader.read()  # the client's close ends this read
            closed.set()
            return False
        return await echo(seen, reader, writer)

    async def main():
        async with Upstream(first_silent) as up:
            c = client()
            call = asyncio.create_task(get(c, up.base, "/never"))
            await asyncio.sleep(0.2)
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call
            await asyncio.wait_for(closed.wait(), 2.0)  # not left open behind the pool's back
            after = await get(c, up.base, "/next")
            await c.close()
            return up, after

    up, after = run(main())
    assert after.status == 200 and after.body.startswith(b"GET /next c2 n1")
    assert up.connections == 2


def test_timeouts_count_for_the_breaker() -> None:
    async def silent(seen, reader, writer) -> bool:
        await reader.read()
        return False

    async def main():
        async with Upstream(silent) as up:
            c = client(failures_to_open=2, open_seconds=30)
            first = [await problem_of(get(c, up.base, timeout_ms=100)) for _ in range(2)]
            third = await problem_of(get(c, up.base, timeout_ms=100))
            return first, third

    first, third = run(main())
    assert [p.code for p in first] == ["upstream-timeout"] * 2
    assert third.status == 503 and third.code == "circuit-open"


# -- HEAD --------------------------------------------------------------------------------------------------------------


def test_head_with_content_length_and_no_body_completes() -> None:
    async def head(seen, reader, writer) -> bool:
        assert seen.method == "HEAD"
        writer.write(b'HTTP/1.1 200 OK\r\nContent-Length: 1234\r\nContent-Type: application/json\r\nETag: "v1"\r\n\r\n')
        await writer.drain()
        return True

    async def main():
        async with Upstream(head) as up:
            c = client()
            started = time.monotonic()
            first = await get(c, up.base, method="HEAD", timeout_ms=2000)
            elapsed = time.monotonic() - started
            second = await get(c, up.base, method="HEAD", timeout_ms=2000)
            await c.close()
            return up, first, second, elapsed

    up, first, second, elapsed = run(main())
    assert first.status == 200 and first.body == b""
    assert first.headers == [("content-type", "application/json"), ("etag", '"v1"')]
    assert second.status == 200 and second.body == b""
    assert elapsed < 1.0  # did not wait for 1234 bytes that never come
    assert len(up.requests) == 2


def test_get_after_head_is_in_step() -> None:
    async def mixed(seen, reader, writer) -> bool:
        if seen.method == "HEAD":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")
        else:
            writer.write(answer(200, b"hello"))
        await writer.drain()
        return True

    async def main():
        async with Upstream(mixed) as up:
            c = client()
            await get(c, up.base, method="HEAD")
            response = await get(c, up.base)
            await c.close()
            return response

    assert run(main()).body == b"hello"


# -- bugs found while writing these tests, fixed: they stay as regression tests ------------------------------


def test_interim_1xx_response_is_skipped() -> None:
    async def early_hints(seen, reader, writer) -> bool:
        writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.1)
        writer.write(answer(200, f"for {seen.target}".encode()))
        await writer.drain()
        return True

    async def main():
        async with Upstream(early_hints) as up:
            c = client()
            first = await get(c, up.base, "/first")
            second = await get(c, up.base, "/second")
            await c.close()
            return first, second

    first, second = run(main())
    assert (first.status, first.body, second.body) == (200, b"for /first", b"for /second")


def test_body_delimited_by_close_is_read() -> None:
    async def old_style(seen, reader, writer) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\nall of it")
        await writer.drain()
        return False

    async def main():
        async with Upstream(old_style) as up:
            return await get(client(), up.base)

    response = run(main())
    assert (response.status, response.body) == (200, b"all of it")


def test_trailer_fields_are_not_merged_into_the_headers() -> None:
    async def with_trailer(seen, reader, writer) -> bool:
        writer.write(answer(200, headers=("Transfer-Encoding: chunked", "Content-Type: text/plain")))
        writer.write(b"2\r\nok\r\n0\r\nX-Road-Error: forged-in-trailer\r\n\r\n")
        await writer.drain()
        return True

    async def main():
        async with Upstream(with_trailer) as up:
            c = client()
            response = await get(c, up.base)
            await c.close()
            return response

    response = run(main())
    assert response.body == b"ok"
    assert response.headers == [("content-type", "text/plain")]  # RFC 9110 §6.5.1: not merged
