"""The central transaction log's stores and shipper, against a real PostgreSQL (127.0.0.1:5432, db `test`, one schema
per test, dropped after) and a real SQLite file: COPY ingest, exactly-once batches, day partitions and retention,
every filter, keyset paging and exact percentiles, each checked against a plain Python computation over the same
records (a differential test); then the shipper through a store outage."""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from lienthong.redis_connection import free_port
from policies.txlog_postgres import PostgresStore
from policies.txlog_ship import Shipper, Spool
from policies.txlog_store import (
    CALL_FIELDS,
    DAY_US,
    BatchId,
    Filters,
    StoreUnavailable,
    TxlogStore,
    open_store,
    us,
)

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"
DAY = 86400.0
T0 = 1_790_000_000 // 86400 * 86400 + 3600.0  # 01:00 UTC on some day
CLIENTS = ["VN/PROV/HANOI/public-services", "VN/PROV/NGHEAN/civil-status", "VN/GOV/BTP/civil-registry"]
SERVICES = ["VN/GOV/BCA/population/persons", "VN/GOV/BTC/business-registry/enterprises",
            "VN/PROV/NGHEAN/civil-status/births"]
OUTCOMES = ["found", "no-data", "not-permitted", "client-error", "provider-failure", "platform-failure"]
HMACS = [f"{i:064x}" for i in range(6)]


def pg_reason() -> str | None:
    try:
        psycopg.connect(PG_ADMIN, connect_timeout=3).close()
    except psycopg.Error as exc:
        return f"no PostgreSQL at 127.0.0.1:5432/test ({type(exc).__name__})"
    return None


@pytest.fixture
def pg_url() -> Iterator[str]:
    reason = pg_reason()
    if reason:
        pytest.skip(reason)
    schema = f"txlog_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f"CREATE SCHEMA {schema}")
    try:
        yield f"{PG_ADMIN}?options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            admin.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture(params=["postgresql", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TxlogStore]:
    url = request.getfixturevalue("pg_url") if request.param == "postgresql" else f"sqlite:///{tmp_path}/t.sqlite3"
    opened = open_store(url)
    yield opened
    opened.close()


def record(i: int, t: float, rng: random.Random) -> dict[str, Any]:
    role = rng.choice(["home", "provider", "local"])
    outcome = rng.choice(OUTCOMES)
    duration = round(rng.expovariate(1 / 40), 3)
    return {
        "id": f"gw{i % 3}:tx-{i:06d}:{role}", "time_in": t, "time_out": t + duration / 1000, "duration_ms": duration,
        "request_out": t + 0.0001, "response_in": None, "client": rng.choice(CLIENTS), "service": rng.choice(SERVICES),
        "endpoint": rng.choice(["/persons/{id}", "/enterprises/{code}"]), "method": rng.choice(["GET", "POST"]),
        "status": 200 if outcome == "found" else 404, "outcome": outcome,
        "error_type": None if outcome == "found" else rng.choice(["http-404", "upstream-timeout"]),
        "request_bytes": rng.randrange(0, 500), "response_bytes": rng.randrange(0, 5000), "xroad_id": f"tx-{i:06d}",
        "user_id": rng.choice([None, "=cmd|' /C calc'!A0", "officer-7"]), "purpose": "birth-registration",
        "subject_hmacs": rng.sample(HMACS, rng.randrange(0, 3)), "consumer_gateway": "nghean",
        "provider_gateway": "national", "gateway": f"gw{i % 3}", "role": role,
    }  # fmt: skip


def records(n: int, seed: int = 7, spread: float = 3600.0, ties: bool = True) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    times = [T0 + rng.uniform(0, spread) for _ in range(n)]
    if ties:  # equal times: paging must break them by id
        times[1::10] = [times[0]] * len(times[1::10])
    return [record(i, t, rng) for i, t in enumerate(times)]


def lines(recs: list[dict[str, Any]]) -> list[bytes]:
    return [_line(r) for r in recs]


def ingest_all(store: TxlogStore, recs: list[dict[str, Any]], spool: str = "gw/spool-0-a", size: int = 400) -> None:
    for k in range(0, len(recs), size):
        assert store.ingest(BatchId(spool, k, k + size), lines(recs[k : k + size]))


def everything(store: TxlogStore, filters: Filters = Filters(), limit: int = 1000) -> list[dict[str, Any]]:
    page = store.query(filters, 0, us(T0 + 40 * DAY), limit)
    return page.rows


def expected(recs: list[dict[str, Any]], keep: Any) -> list[str]:
    """The reference: the records a filter keeps, newest first (time_in then id, descending)."""
    kept = [r for r in recs if keep(r)]
    return [r["id"] for r in sorted(kept, key=lambda r: (us(r["time_in"]), r["id"]), reverse=True)]


def test_copy_ingest_then_a_replayed_batch_is_stored_once(store: TxlogStore) -> None:
    recs = records(1000)
    assert store.ingest(BatchId("nghean/spool-0-x", 0, 5000), lines(recs[:600]))
    assert store.watermark("nghean/spool-0-x") == 5000
    assert not store.ingest(BatchId("nghean/spool-0-x", 0, 5000), lines(recs[:600]))  # the same batch again
    assert not store.ingest(BatchId("nghean/spool-0-x", 4000, 6000), lines(recs[500:700]))  # overlapping: refused whole
    assert store.ingest(BatchId("nghean/spool-0-x", 5000, 9000), lines(recs[600:]))  # the next one
    assert store.ingest(BatchId("national/spool-0-x", 0, 10), lines(recs[:1]))  # another spool: its own watermark
    ids = [r["id"] for r in everything(store, limit=2000)]
    assert len(ids) == 1001 and sorted(ids) == sorted([r["id"] for r in recs] + [recs[0]["id"]])
    assert store.watermark("nghean/spool-0-x") == 9000 and store.watermark("nobody/spool") == 0


def test_a_line_that_is_no_record_is_skipped_not_stuck(store: TxlogStore) -> None:
    recs = records(3)
    damaged = [_line(recs[0]), b'{"id": "torn", "time_in"\n', b"[1, 2]\n", b'{"id": 5}\n', _line(recs[1])]
    assert store.ingest(BatchId("gw/spool-0-d", 0, 100), damaged)
    assert sorted(r["id"] for r in everything(store)) == sorted([recs[0]["id"], recs[1]["id"]])
    assert store.watermark("gw/spool-0-d") == 100


def test_a_record_reads_back_field_for_field(store: TxlogStore) -> None:
    recs = records(3)
    ingest_all(store, recs)
    back = {r["id"]: r for r in everything(store)}
    for rec in recs:
        row = back[rec["id"]]
        assert list(row) == list(CALL_FIELDS)
        assert row["time_in"] == us(rec["time_in"]) and row["time_out"] == us(rec["time_out"])
        for name in CALL_FIELDS[3:]:
            assert row[name] == rec[name], name


FILTERS: list[tuple[str, Filters, Any]] = [
    ("client", Filters(client=CLIENTS[1]), lambda r: r["client"] == CLIENTS[1]),
    ("service", Filters(service=SERVICES[0]), lambda r: r["service"] == SERVICES[0]),
    ("endpoint", Filters(endpoint="/persons/{id}"), lambda r: r["endpoint"] == "/persons/{id}"),
    ("method", Filters(endpoint="/persons/{id}", method="POST"),
     lambda r: r["endpoint"] == "/persons/{id}" and r["method"] == "POST"),
    ("outcome", Filters(outcome="no-data"), lambda r: r["outcome"] == "no-data"),
    ("error_type", Filters(error_type="upstream-timeout"), lambda r: r["error_type"] == "upstream-timeout"),
    ("xroad_id", Filters(xroad_id="tx-000042"), lambda r: r["xroad_id"] == "tx-000042"),
    ("subject", Filters(subject_hmacs=(HMACS[2],)), lambda r: HMACS[2] in r["subject_hmacs"]),
    ("roles", Filters(roles=("home", "local")), lambda r: r["role"] in ("home", "local")),
    ("member", Filters(member="VN/PROV/NGHEAN"),
     lambda r: r["client"].startswith("VN/PROV/NGHEAN/") or r["service"].startswith("VN/PROV/NGHEAN/")),
    ("combined", Filters(client=CLIENTS[0], outcome="found", member="VN/GOV/BCA", roles=("home",)),
     lambda r: r["client"] == CLIENTS[0] and r["outcome"] == "found" and r["role"] == "home"
     and r["service"].startswith("VN/GOV/BCA/")),
]  # fmt: skip


@pytest.mark.parametrize(("name", "filters", "keep"), FILTERS, ids=[f[0] for f in FILTERS])
def test_each_filter_keeps_what_python_keeps(store: TxlogStore, name: str, filters: Filters, keep: Any) -> None:
    recs = records(1200)
    ingest_all(store, recs)
    want = expected(recs, keep)
    assert want, "the case must match something"
    assert [r["id"] for r in everything(store, filters, limit=2000)] == want


def test_a_time_window_is_start_inclusive_end_exclusive(store: TxlogStore) -> None:
    recs = records(500)
    ingest_all(store, recs)
    lo, hi = sorted({us(r["time_in"]) for r in recs})[100], sorted({us(r["time_in"]) for r in recs})[300]
    got = [r["id"] for r in store.query(Filters(), lo, hi, 1000).rows]
    assert got == expected(recs, lambda r: lo <= us(r["time_in"]) < hi)


@pytest.mark.parametrize("limit", [1, 7, 100])
def test_keyset_paging_newest_first_without_gaps_or_repeats(store: TxlogStore, limit: int) -> None:
    recs = records(230)
    ingest_all(store, recs)
    seen: list[str] = []
    after = None
    while True:
        page = store.query(Filters(), 0, us(T0 + DAY), limit, after)
        seen += [r["id"] for r in page.rows]
        assert len(page.rows) <= limit
        if page.next is None:
            break
        after = page.next
    assert seen == expected(recs, lambda r: True)


def reference_percentile(values: list[float], p: float) -> float:
    """percentile_cont written out again for the test: rank p*(n-1), linear between its neighbours."""
    s = sorted(values)
    rank = p * (len(s) - 1)
    below = int(rank)
    if below + 1 >= len(s):
        return s[-1]
    return s[below] * (1 - (rank - below)) + s[below + 1] * (rank - below)


@pytest.mark.parametrize("n", [1, 2, 10, 997])
def test_latency_percentiles_are_exact(store: TxlogStore, n: int) -> None:
    recs = records(n, seed=n)
    ingest_all(store, recs)
    cases = ((Filters(), lambda r: True), (Filters(service=SERVICES[1]), lambda r: r["service"] == SERVICES[1]))
    for filters, keep in cases:
        values = [r["duration_ms"] for r in recs if keep(r)]
        got = store.latency(filters, 0, us(T0 + DAY))
        assert got.count == len(values)
        if not values:
            assert got.p50_ms is None
            continue
        for p, value in ((0.5, got.p50_ms), (0.9, got.p90_ms), (0.99, got.p99_ms)):
            assert value == pytest.approx(reference_percentile(values, p), rel=1e-9, abs=1e-9), p
        assert got.max_ms == max(values)
    assert store.latency(Filters(client="VN/X/Y/none"), 0, us(T0 + DAY)).count == 0


def test_postgres_partitions_by_day_and_retention_drops_old_days_whole(pg_url: str) -> None:
    store = PostgresStore(pg_url)
    try:
        recs = records(500, spread=5 * DAY - 7200)  # five days from T0
        ingest_all(store, recs)
        days = sorted({int(r["time_in"] // DAY) for r in recs})
        assert len(days) == 5
        assert store.partitions() == [f"txlog_p{time.strftime('%Y%m%d', time.gmtime(d * DAY))}" for d in days]
        cutoff = days[2] * DAY_US
        assert store.drop_before(cutoff) == 2
        assert len(store.partitions()) == 3
        assert [r["id"] for r in everything(store)] == expected(recs, lambda r: us(r["time_in"]) >= cutoff)
        late = record(99_999, days[0] * DAY + 60, random.Random(1))  # a record of a dropped day arrives late
        assert store.ingest(BatchId("late/spool", 0, 1), lines([late]))
        assert len(store.partitions()) == 4
    finally:
        store.close()


def test_sqlite_retention_deletes_rows_before_the_day(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path}/r.sqlite3")
    recs = records(300, spread=3 * DAY)
    ingest_all(store, recs)
    cutoff = (int(T0 // DAY) + 2) * DAY_US
    assert store.drop_before(cutoff) == sum(1 for r in recs if us(r["time_in"]) < cutoff)
    assert [r["id"] for r in everything(store)] == expected(recs, lambda r: us(r["time_in"]) >= cutoff)


def test_a_store_that_cannot_be_reached_says_so(tmp_path: Path) -> None:
    store = open_store("postgresql://postgres@127.0.0.1:1/test")
    assert store.health()[0] is False
    with pytest.raises(StoreUnavailable):
        store.query(Filters(), 0, 1, 10)
    with pytest.raises(ValueError, match="sqlite"):
        open_store("mysql://x/y")


class Link:
    """A real TCP link to PostgreSQL that can be cut (listener closed, every connection shut) and restored."""

    def __init__(self) -> None:
        self.port = free_port()
        self.sockets: list[socket.socket] = []
        self.listener: socket.socket | None = None

    def up(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, args=(self.listener,), daemon=True).start()

    def down(self) -> None:
        assert self.listener is not None
        with contextlib.suppress(OSError):  # wakes the accept() thread: a closed fd alone leaves it LISTENing
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self.sockets.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # closed: the link is down
            server = socket.create_connection(("127.0.0.1", 5432))
            self.sockets += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_RDWR)


def test_the_shipper_keeps_records_through_a_store_outage_and_stores_each_once(pg_url: str, tmp_path: Path) -> None:
    link = Link()
    link.up()
    url = pg_url.replace("127.0.0.1:5432", f"127.0.0.1:{link.port}")
    recs = records(3000, ties=False)

    async def scenario() -> int:
        spool = Spool(tmp_path / "txlog")
        spool.open()
        shipper = Shipper("nghean", spool, open_store(url), retention_days=0)
        await shipper.start()
        try:
            for rec in recs[:1000]:
                spool.append(_line(rec))
            await _until(lambda: _count(pg_url) == 1000, "the first thousand shipped")
            link.down()  # the store goes away, open connections too
            for rec in recs[1000:]:
                spool.append(_line(rec))
            await _until(lambda: not shipper.store_ok, "the shipper noticing the outage")
            await asyncio.sleep(1)
            assert _count(pg_url) == 1000  # the rest waits in the spool
            link.up()  # back, at the same address
            await _until(lambda: _count(pg_url) == 3000, "the backlog shipped after the outage")
            return spool.written
        finally:
            await shipper.stop()
            spool.close()

    try:
        written = asyncio.run(scenario())
    finally:
        link.down()
    store = open_store(pg_url)
    ids = [r["id"] for r in store.query(Filters(), 0, us(T0 + DAY), 5000).rows]
    assert sorted(ids) == sorted(r["id"] for r in recs)  # each once
    assert store.watermark(f"nghean/{next((tmp_path / 'txlog').glob('spool-*.jsonl')).stem}") == written
    store.close()


def _line(rec: dict[str, Any]) -> bytes:
    import orjson

    return orjson.dumps(rec, option=orjson.OPT_APPEND_NEWLINE)


def _count(url: str) -> int:
    try:
        with psycopg.connect(url) as conn:
            row = conn.execute("SELECT count(*) FROM txlog").fetchone()
            return int(row[0]) if row else 0
    except psycopg.errors.UndefinedTable:  # the shipper has not created it yet
        return 0


async def _until(check: Any, what: str, timeout: float = 60.0) -> None:
    """A bound that only catches a hang: shipping takes about a second."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what} never happened"
        await asyncio.sleep(0.1)
