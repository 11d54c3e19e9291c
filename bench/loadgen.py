"""The Python load generator: keep-alive HTTP/1.1 (over TLS for https:// URLs) on asyncio streams, for when wrk is
missing and for low rates.

Two modes:
- closed loop (`run_concurrency`): a fixed number of connections, each sending the next request as soon as the previous
  answer arrived, for a fixed duration; that is what wrk does, and it measures throughput and latency under load.
- fixed rate (`run_rate`): requests are started on a fixed schedule whatever the answers do, and each latency is counted
  from its scheduled start, so a slow answer is not hidden by the generator waiting (no coordinated omission). Over
  TLS, two connections are opened (handshakes done) before the schedule starts.

Run as `python -m bench.loadgen URL [--connections N | --rate R] [--duration S] [-H 'Name: value']... [--tls-dir D]`;
it prints one JSON object, so the harness can pin it to its own core with taskset. With an https:// URL, `--tls-dir`
is a pki.CertFiles directory: the server must chain to its ca.crt, and its tls.crt/tls.key, when there, are the
client certificate presented (TLS 1.3, as every mesh peer speaks it).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import ssl
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlsplit


@dataclass
class LoadResult:
    """What one load run measured; latencies in milliseconds."""

    requests: int
    errors: int
    non2xx: int
    duration_s: float
    rps: float
    p50_ms: float | None
    p99_ms: float | None
    p999_ms: float | None
    mean_ms: float | None
    generator: str = "python"
    statuses: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def percentile(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank percentile of an already sorted list (q in 0..100)."""
    if not sorted_values:
        return None
    rank = max(0, min(len(sorted_values) - 1, math.ceil(q / 100.0 * len(sorted_values)) - 1))
    return sorted_values[rank]


def summarize(latencies_s: list[float], errors: int, statuses: dict[int, int], duration_s: float) -> LoadResult:
    ordered = sorted(x * 1000.0 for x in latencies_s)
    ok = sum(n for code, n in statuses.items() if 200 <= code < 300)
    total = sum(statuses.values())
    return LoadResult(
        requests=total,
        errors=errors,
        non2xx=total - ok,
        duration_s=round(duration_s, 3),
        rps=round(total / duration_s, 1) if duration_s > 0 else 0.0,
        p50_ms=percentile(ordered, 50),
        p99_ms=percentile(ordered, 99),
        p999_ms=percentile(ordered, 99.9),
        mean_ms=(sum(ordered) / len(ordered)) if ordered else None,
        statuses={str(k): v for k, v in sorted(statuses.items())},
    )


class Target:
    """Where to send and the request bytes, built once: the hot loop only writes them."""

    def __init__(self, url: str, headers: dict[str, str] | None = None, method: str = "GET",
                 varying: tuple[str, list[str]] | None = None, tls: ssl.SSLContext | None = None) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"only http:// and https:// URLs are supported, not {url!r}")
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        # https: the given context (the mesh CA, a client certificate), else the system's
        self.tls = (tls or ssl.create_default_context()) if parts.scheme == "https" else None
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        lines = [f"{method} {path} HTTP/1.1", f"Host: {parts.netloc}", "Connection: keep-alive"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        self.request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        # A header whose value must change per request (single-use assertions): cycle through pre-made values.
        self._varying: list[bytes] = []
        if varying:
            name, values = varying
            head = "\r\n".join(lines).encode("latin-1")
            self._varying = [head + f"\r\n{name}: {v}\r\n\r\n".encode("latin-1") for v in values]
        self._next = 0

    def next_request(self) -> bytes:
        if not self._varying:
            return self.request
        request = self._varying[self._next % len(self._varying)]
        self._next += 1
        return request


class Connection:
    """One keep-alive connection that sends a request and reads exactly one response."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, target: Target) -> Connection:
        reader, writer = await asyncio.open_connection(target.host, target.port, ssl=target.tls)
        return cls(reader, writer)

    async def call(self, request: bytes) -> tuple[int, bool]:
        """Send and read one answer; returns (status, keep_alive)."""
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status_line, _, header_block = head.partition(b"\r\n")
        status = int(status_line.split(b" ", 2)[1])
        length = -1
        chunked = False
        keep_alive = not status_line.startswith(b"HTTP/1.0")
        for line in header_block.split(b"\r\n"):
            name, _, value = line.partition(b":")
            lname = name.strip().lower()
            if lname == b"content-length":
                length = int(value.strip())
            elif lname == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
            elif lname == b"connection":
                keep_alive = value.strip().lower() != b"close"
        if chunked:
            while True:
                size_line = await self.reader.readuntil(b"\r\n")
                size = int(size_line.split(b";", 1)[0].strip(), 16)
                await self.reader.readexactly(size + 2)
                if size == 0:
                    break
        elif length > 0:
            await self.reader.readexactly(length)
        elif length < 0 and status not in (204, 304):
            await self.reader.read()  # body runs until close
            keep_alive = False
        return status, keep_alive

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


# what one call can fail with: refused or cut connections (a failed handshake is an ssl.SSLError, an OSError), or an
# answer that is not HTTP
CALL_ERRORS = (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, IndexError)


class Tally:
    """Latencies, statuses and errors of one load run, shared by the closed- and open-loop generators."""

    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.statuses: dict[int, int] = {}
        self.errors = 0

    def answered(self, status: int, latency: float) -> None:
        self.latencies.append(latency)
        self.statuses[status] = self.statuses.get(status, 0) + 1

    def result(self, elapsed: float) -> LoadResult:
        return summarize(self.latencies, self.errors, self.statuses, elapsed)


async def run_concurrency(
    url: str, *, connections: int = 32, duration: float = 5.0, headers: dict[str, str] | None = None,
    varying: tuple[str, list[str]] | None = None, tls: ssl.SSLContext | None = None,
) -> LoadResult:
    """Closed loop: `connections` workers each send back-to-back requests for `duration` seconds."""
    target = Target(url, headers, varying=varying, tls=tls)
    tally = Tally()
    stop_at = time.perf_counter() + duration

    async def worker() -> None:
        conn: Connection | None = None
        clock = time.perf_counter
        while clock() < stop_at:
            try:
                if conn is None:
                    conn = await Connection.open(target)
                started = clock()
                status, keep = await conn.call(target.next_request())
                tally.answered(status, clock() - started)
                if not keep:
                    conn.close()
                    conn = None
            except CALL_ERRORS:
                tally.errors += 1
                if conn is not None:
                    conn.close()
                conn = None
                await asyncio.sleep(0.01)  # a refused connection must not spin the loop
        if conn is not None:
            conn.close()

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(connections)))
    return tally.result(time.perf_counter() - began)


WARM_CONNECTIONS = 2  # opened before a fixed-rate run over TLS (run_rate)


async def run_rate(
    url: str, *, rate: float = 200.0, duration: float = 3.0, headers: dict[str, str] | None = None,
    varying: tuple[str, list[str]] | None = None, tls: ssl.SSLContext | None = None,
) -> LoadResult:
    """Open loop at a fixed rate; each latency counts from the request's scheduled start."""
    target = Target(url, headers, varying=varying, tls=tls)
    tally = Tally()
    idle: list[Connection] = []
    interval = 1.0 / rate
    total = max(1, int(rate * duration))
    clock = time.perf_counter

    async def one(scheduled: float) -> None:
        conn = idle.pop() if idle else None
        try:
            if conn is None:
                conn = await Connection.open(target)
            status, keep = await conn.call(target.next_request())
            tally.answered(status, clock() - scheduled)
            if keep:
                idle.append(conn)
            else:
                conn.close()
        except CALL_ERRORS:
            tally.errors += 1
            if conn is not None:
                conn.close()

    if target.tls is not None:
        # Handshakes before the schedule starts: a kept-alive client pays one per connection, not per request, so
        # the few a fresh generator process would pay inside its first requests are not part of the steady state.
        with contextlib.suppress(*CALL_ERRORS):
            for _ in range(min(WARM_CONNECTIONS, total)):
                idle.append(await Connection.open(target))
    began = clock()
    tasks: list[asyncio.Task[None]] = []
    for i in range(total):
        scheduled = began + i * interval
        delay = scheduled - clock()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(scheduled)))
    await asyncio.gather(*tasks)
    elapsed = clock() - began
    for conn in idle:
        conn.close()
    return tally.result(elapsed)


def run_sync(url: str, *, connections: int = 32, rate: float | None = None, duration: float = 5.0,
             headers: dict[str, str] | None = None, varying: tuple[str, list[str]] | None = None,
             tls: ssl.SSLContext | None = None) -> LoadResult:
    """Run one load in a fresh event loop (uvloop when installed, as the generator should not be the bottleneck)."""
    coro = (
        run_rate(url, rate=rate, duration=duration, headers=headers, varying=varying, tls=tls)
        if rate
        else run_concurrency(url, connections=connections, duration=duration, headers=headers, varying=varying,
                             tls=tls)
    )
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:
        return asyncio.run(coro)


def parse_header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"a header looks like 'Name: value', not {text!r}")
    return name.strip(), value.strip()


def tls_context(directory: Path) -> ssl.SSLContext:
    """A client context from a pki.CertFiles directory: its ca.crt, and its certificate when it holds one."""
    from lienthong import pki

    files = pki.CertFiles(directory)
    return pki.client_context(files.ca, files if files.key.exists() and files.cert.exists() else None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen", description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("--connections", "-c", type=int, default=32)
    parser.add_argument("--rate", type=float, default=None, help="fixed request rate per second (open loop)")
    parser.add_argument("--duration", "-d", type=float, default=5.0)
    parser.add_argument("--header", "-H", action="append", type=parse_header, default=[])
    parser.add_argument("--vary-header", metavar="NAME=FILE",
                        help="send header NAME with the next line of FILE on each request (single-use tokens)")
    parser.add_argument("--tls-dir", type=Path, help="for https: ca.crt to verify with, tls.crt/tls.key to present")
    args = parser.parse_args(argv)
    varying = None
    if args.vary_header:
        name, _, path = args.vary_header.partition("=")
        with open(path) as f:
            varying = (name, [line.strip() for line in f if line.strip()])
    result = run_sync(args.url, connections=args.connections, rate=args.rate, duration=args.duration,
                      headers=dict(args.header), varying=varying,
                      tls=tls_context(args.tls_dir) if args.tls_dir else None)
    sys.stdout.write(json.dumps(result.to_dict()) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
