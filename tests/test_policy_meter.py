"""meter: counts stay exact through a kill -9 of a spooling process and through a Redis outage.

The child process (`python -m tests.test_policy_meter child ...`) is a real worker using the meter policy as a
gateway does: log() per call on the event loop, the flusher in the background.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time
from pathlib import Path

import orjson
import pytest
import redis

from lienthong.redis_connection import EmbeddedRedis
from lienthong.snapshot import Snapshot
from policies.meter import UNIDENTIFIED, Meter
from tests.procs import Proc
from tests.test_policy_fixtures import CONSUMER, World, context


def total(url: str) -> int:
    client = redis.Redis.from_url(url)
    return sum(int(v) for key in client.keys("meter:h:*") for v in client.hvals(key))


def wait_total(url: str, expected: int, timeout: float = 15.0) -> int:
    deadline = time.monotonic() + timeout
    seen = -1
    while time.monotonic() < deadline:
        try:
            seen = total(url)
        except redis.RedisError:
            seen = -1
        if seen == expected:
            return seen
        time.sleep(0.05)
    return seen


def spooled_lines(directory: Path) -> int:
    count = 0
    for path in (directory / "meter").glob("spool-*.jsonl"):
        count += path.read_bytes().count(b"\n")
    return count


async def _child(data_dir: Path, url: str, n: int, forever: bool) -> None:
    meter = Meter("nghean", data_dir, url)
    await meter.start()
    snap = World().snapshot()
    ctx = context(snap, role="home", gateway="nghean")
    ctx.client, ctx.status, ctx.consumer_gateway = CONSUMER, 200, "nghean"
    i = 0
    while forever or i < n:
        ctx.status = (200, 404, 502)[i % 3]
        meter.log(ctx)
        i += 1
        if i % 50 == 0:
            await asyncio.sleep(0.001)  # let the flusher run between calls, as a busy gateway does
    print(f"done {i}", flush=True)
    while True:
        await asyncio.sleep(1)


def test_kill_9_after_logging_loses_nothing_and_counts_nothing_twice(redis_url: str, tmp_path: Path) -> None:
    n = 6000
    args = [sys.executable, "-m", "tests.test_policy_meter", "child", str(tmp_path), redis_url]
    first = Proc("meter-child", [*args, str(n)], tmp_path).start()
    deadline = time.monotonic() + 20
    while "done" not in first.log_tail() and time.monotonic() < deadline:
        time.sleep(0.005)
    first.kill9()  # typically with part of the spool not yet in Redis
    assert "done 6000" in first.log_tail()
    assert total(redis_url) <= n  # in practice about two thirds: the rest is only in the spool
    second = Proc("meter-child-2", [*args, "0"], tmp_path).start()
    try:
        assert wait_total(redis_url, n) == n
        time.sleep(0.3)
        assert total(redis_url) == n  # the replay applied each batch once
    finally:
        second.stop()


def test_kill_9_mid_stream_counts_exactly_what_was_spooled(redis_url: str, tmp_path: Path) -> None:
    args = [sys.executable, "-m", "tests.test_policy_meter", "child", str(tmp_path), redis_url]
    child = Proc("meter-forever", [*args, "forever"], tmp_path).start()
    deadline = time.monotonic() + 30  # a loaded machine may take seconds to start the child
    while spooled_lines(tmp_path) < 5000 and time.monotonic() < deadline:
        time.sleep(0.05)
    child.kill9()
    spooled = spooled_lines(tmp_path)
    assert spooled >= 5000
    restart = Proc("meter-restart", [*args, "0"], tmp_path).start()
    try:
        assert wait_total(redis_url, spooled) == spooled
        deadline = time.monotonic() + 10  # the file goes just after its last batch is applied
        while spooled_lines(tmp_path) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert spooled_lines(tmp_path) == 0  # adopted spools are removed once applied
    finally:
        restart.stop()


def test_redis_down_for_a_while_then_back_loses_no_count(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path / "redis", durable=True)
    url = server.start()

    async def scenario() -> None:
        nonlocal server
        meter = Meter("nghean", tmp_path / "gw", url)
        await meter.start()
        snap = World().snapshot()
        ctx = context(snap, role="home", gateway="nghean")
        ctx.client, ctx.status = CONSUMER, 200
        for _ in range(500):
            meter.log(ctx)
        await asyncio.sleep(0.5)
        assert total(url) == 500
        await asyncio.sleep(1.2)  # past the append-only file's once-a-second fsync
        server.kill()
        for _ in range(700):
            meter.log(ctx)
        await asyncio.sleep(2.0)
        assert not meter.redis_ok
        server = EmbeddedRedis(tmp_path / "redis", port=server.port, durable=True)
        server.start()
        for _ in range(100):
            meter.log(ctx)
        deadline = time.monotonic() + 10
        while total(url) != 1300 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        await meter.stop()

    try:
        asyncio.run(scenario())
        assert total(url) == 1300
    finally:
        server.stop()


def test_an_unexpected_fault_does_not_end_the_flush_loop(
    redis_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A fault nobody foresaw is logged with its traceback and the loop flushes on; a damaged spool line is skipped."""
    faults: list[str] = []

    async def scenario() -> None:
        meter = Meter("nghean", tmp_path, redis_url)
        await meter.start()
        real = meter.sync_and_apply

        def fails_once() -> None:
            if not faults:
                faults.append("raised")
                raise RuntimeError("injected fault")
            real()

        meter.sync_and_apply = fails_once  # type: ignore[method-assign]
        ctx = context(World().snapshot(), role="home", gateway="nghean")
        ctx.client, ctx.status = CONSUMER, 200
        for _ in range(100):
            meter.log(ctx)
        assert await asyncio.to_thread(wait_total, redis_url, 100) == 100
        os.write(meter._fd, b"\x00damaged\n")  # as a bad disk block would leave it
        meter._written += len(b"\x00damaged\n")
        for _ in range(50):
            meter.log(ctx)
        assert await asyncio.to_thread(wait_total, redis_url, 150) == 150
        assert meter._task is not None and not meter._task.done()
        await meter.stop()

    with caplog.at_level(logging.ERROR, logger="lienthong.policies.meter"):
        asyncio.run(scenario())
    assert faults == ["raised"]
    assert any(r.exc_info and "injected fault" in str(r.exc_info[1]) for r in caplog.records)  # with its traceback
    assert "no record" in caplog.text


def test_counts_carry_every_dimension_and_a_latency_histogram(redis_url: str, tmp_path: Path) -> None:
    meter = Meter("nghean", tmp_path, redis_url)
    meter.open()
    world = World()
    doc = world.doc()
    doc["services"][0]["endpoints"][0]["no_data"] = [404]  # GET /persons/{id} declares its 404 as no data
    snap = Snapshot(doc)
    calls = ((200, None, CONSUMER), (404, None, CONSUMER), (403, "access-denied", CONSUMER), (400, None, CONSUMER),
             (502, "upstream-failed", CONSUMER), (500, None, CONSUMER), (503, "snapshot-expired", CONSUMER),
             (401, "invalid-token", None))  # fmt: skip
    for status, code, who in calls:
        ctx = context(snap, role="home", gateway="nghean")
        ctx.client, ctx.status, ctx.error_code, ctx.consumer_gateway = who, status, code, "nghean"
        ctx.provider_gateway = "national"
        ctx.response_out = ctx.request_in + 0.012
        meter.log(ctx)
    meter.flush_once()
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    counts = client.hgetall(client.keys("meter:h:*")[0])
    rest = "|VN/GOV/BCA/population/persons|GET /persons/{id}|nghean|national|home|"
    # the provider's 5xx and the mesh's upstream-failed are both the provider's failure; no-data is the declared 404
    assert counts == {
        f"{CONSUMER}{rest}found": "1", f"{CONSUMER}{rest}no-data": "1", f"{CONSUMER}{rest}not-permitted": "1",
        f"{CONSUMER}{rest}client-error": "1", f"{CONSUMER}{rest}provider-failure": "2",
        f"{CONSUMER}{rest}platform-failure": "1", f"{UNIDENTIFIED}{rest}client-error": "1",
    }  # fmt: skip
    latency = client.hgetall(client.keys("meter:l:*")[0])
    assert latency == {"VN/GOV/BCA/population/persons|GET /persons/{id}|home|20": "8"}


def test_fold_counts_each_call_once_per_redis_field() -> None:
    from policies.meter_store import fold

    def line(t: float, client: str, outcome: str, ms: float) -> bytes:
        return orjson.dumps({"t": t, "c": client, "s": "S", "e": "GET /p", "cg": "hanoi", "pg": "national",
                             "r": "home", "o": outcome, "ms": ms}) + b"\n"  # fmt: skip

    t0 = 1_764_576_000.0  # 2025-12-01 08:00:00 UTC
    lines = [line(t0 + 1, "A", "found", 0.4), line(t0 + 2, "A", "found", 0.9), line(t0 + 3, "A", "found", 3.0),
             line(t0 + 61, "A", "found", 0.5), line(t0 + 5, "B", "client-error", 0.2)]  # fmt: skip
    deltas = fold(lines, "hanoi")
    a = "A|S|GET /p|hanoi|national|home|found"
    assert deltas[("meter:h:{hanoi}:2025120108", a)] == 4
    assert deltas[("meter:h:{hanoi}:2025120108", "B|S|GET /p|hanoi|national|home|client-error")] == 1
    assert deltas[("meter:m:{hanoi}:202512010800", a)] == 3 and deltas[("meter:m:{hanoi}:202512010801", a)] == 1
    # sub-millisecond calls fall into buckets of their own (0.25, 0.5, 1 ms), not into one "under 1 ms"
    assert deltas[("meter:l:{hanoi}:2025120108", "S|GET /p|home|0.25")] == 1  # 0.2 (B)
    assert deltas[("meter:l:{hanoi}:2025120108", "S|GET /p|home|0.5")] == 2  # 0.4 and 0.5
    assert deltas[("meter:l:{hanoi}:2025120108", "S|GET /p|home|1")] == 1  # 0.9
    assert deltas[("meter:l:{hanoi}:2025120108", "S|GET /p|home|5")] == 1  # 3.0
    assert deltas[("meter:lm:{hanoi}:202512010801", "S|GET /p|home|0.5")] == 1
    assert sum(n for (key, _), n in deltas.items() if key.startswith("meter:h:")) == len(lines)
    # a line that is no record (a damaged disk) is skipped, not fatal: the records around it still count
    damaged = fold([lines[0], b"\x00\x00{not json\n", b'{"t": "x"}\n', lines[1]], "hanoi")
    assert damaged[("meter:h:{hanoi}:2025120108", a)] == 2


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("mode")
    parser.add_argument("dir")
    parser.add_argument("redis")
    parser.add_argument("n")
    ns = parser.parse_args()
    forever = ns.n == "forever"
    asyncio.run(_child(Path(ns.dir), ns.redis, 0 if forever else int(ns.n), forever))
