"""The transaction log in PostgreSQL (psycopg 3): one table partitioned by day on time_in, fed through binary COPY,
and the data tracker's index (`txlog_subjects`, partitioned by month), filled in the same transaction.

Partitions (`txlog_pYYYYMMDD`, `txlog_sYYYYMM`) are created on demand, before the batch that needs one, under an
advisory lock so gateways that start a day together do not race; retention drops whole partitions, which costs no
vacuum. The watermark of every spool (`txlog_batches`) moves in the transaction that COPYs the batch's rows, so
each batch is stored exactly once (policies/txlog_store.py). The schema is whatever `search_path` names: a test
gives `options=-csearch_path=<schema>` in the URL.
"""

from __future__ import annotations

import logging
import struct
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from operator import itemgetter
from typing import Any

import psycopg
from psycopg import postgres
from psycopg.adapt import Dumper
from psycopg.pq import Format

from policies.txlog_store import (
    ACCESS_FIELDS,
    CALL_FIELDS,
    COLUMNS,
    DAY_US,
    SUBJECT_COLUMNS,
    TIME_COLUMNS,
    BatchId,
    Cursor,
    Dialect,
    Filters,
    Latency,
    Page,
    StoreUnavailable,
    access_sql,
    micros,
    month_start,
    next_month,
    page_of,
    parse_lines,
    subject_rows,
    ts,
    where,
)

log = logging.getLogger("lienthong.policies.txlog")

LOCK_ID = 0x7478_6C6F_67  # "txlog": serializes DDL (schema, partitions) across gateways
MAX_IDLE = 4  # pooled connections kept per store
# the tracker's one question: a person's records, newest first (bench/txlog_bench.py rebuilds it after a bulk load)
SUBJECT_INDEX = "CREATE INDEX IF NOT EXISTS txlog_subjects_hmac_time ON txlog_subjects (hmac, time_in DESC, id DESC)"
# every text is an identifier, compared byte by byte (COLLATE "C"): the database's locale collation made each btree
# comparison a strcoll() call, a good part of ingest's time; it also lets LIKE 'prefix%' use the (client, ...) and
# (service, ...) indexes
T = 'text COLLATE "C"'
SCHEMA = f"""
CREATE TABLE IF NOT EXISTS txlog (
    id {T} NOT NULL, time_in timestamptz NOT NULL, time_out timestamptz NOT NULL, request_out timestamptz,
    response_in timestamptz, duration_ms double precision NOT NULL, client {T}, service {T}, endpoint {T},
    method {T} NOT NULL, status integer NOT NULL, outcome {T} NOT NULL, error_type {T},
    request_bytes bigint NOT NULL, response_bytes bigint NOT NULL, xroad_id {T} NOT NULL, user_id {T}, purpose {T},
    subject_hmacs text[] NOT NULL, consumer_gateway {T}, provider_gateway {T}, gateway {T} NOT NULL,
    role {T} NOT NULL, grant_id {T}, withheld_until timestamptz, user_disclosed boolean NOT NULL DEFAULT false
) PARTITION BY RANGE (time_in);
-- a store made before the data tracker (issue 19) gains its columns
ALTER TABLE txlog ADD COLUMN IF NOT EXISTS grant_id {T}, ADD COLUMN IF NOT EXISTS withheld_until timestamptz,
    ADD COLUMN IF NOT EXISTS user_disclosed boolean NOT NULL DEFAULT false;
CREATE INDEX IF NOT EXISTS txlog_client_time ON txlog (client, time_in);
CREATE INDEX IF NOT EXISTS txlog_service_time ON txlog (service, time_in);
CREATE INDEX IF NOT EXISTS txlog_xroad_id ON txlog (xroad_id);
DROP INDEX IF EXISTS txlog_outcome_time; -- an outcome's calls: (service, time_in) or the BRIN, at a fifth of ingest
CREATE INDEX IF NOT EXISTS txlog_time ON txlog USING brin (time_in);
CREATE TABLE IF NOT EXISTS txlog_subjects (
    hmac {T} NOT NULL, time_in timestamptz NOT NULL, id {T} NOT NULL, client {T}, service {T}, endpoint {T},
    method {T} NOT NULL, purpose {T}, outcome {T} NOT NULL, xroad_id {T} NOT NULL, user_id {T},
    withheld_until timestamptz
) PARTITION BY RANGE (time_in);
{SUBJECT_INDEX};
CREATE TABLE IF NOT EXISTS txlog_batches (
    spool {T} PRIMARY KEY, applied bigint NOT NULL, updated timestamptz NOT NULL DEFAULT now()
);
"""
ERRORS = (psycopg.Error, OSError)
# a store that vanishes mid-query (a network partition) fails the call in seconds instead of hanging the shipper
CONNECT: dict[str, Any] = {"connect_timeout": 3, "application_name": "lienthong-txlog", "keepalives": 1,
                           "keepalives_idle": 5, "keepalives_interval": 2, "keepalives_count": 3,
                           "tcp_user_timeout": 10_000}  # fmt: skip


def partition_name(day_us: int) -> str:
    return "txlog_p" + ts(day_us).strftime("%Y%m%d")


def month_partition_name(month: datetime) -> str:
    return "txlog_s" + month.strftime("%Y%m")


def _subjects(hmacs: tuple[str, ...]) -> tuple[str, list[Any]]:
    return "subject_hmacs && %s::text[]", [list(hmacs)]


DIALECT = Dialect("%s", ts, _subjects)
# Ingest: the shipper has parsed each line already (parse_lines), so the rows go by binary COPY straight into their
# day partition, and the tracker's rows into their month partition: no JSON parsed again, no staging table, no
# partition routing and no text input functions on the server. A timestamptz travels as what its binary form is, an
# int8 of µs since 2000-01-01, so psycopg's C dumpers do all but the subject arrays (ArrayDumper, below).
PG_EPOCH_US = 946_684_800_000_000
_TYPES = {"duration_ms": "float8", "status": "int4", "request_bytes": "int8", "response_bytes": "int8",
          "subject_hmacs": "text[]", "user_disclosed": "bool", **{c: "int8" for c in TIME_COLUMNS}}  # fmt: skip
COPY_TYPES = [_TYPES.get(c, "text") for c in COLUMNS]
SUBJECT_COPY_TYPES = [_TYPES.get(c, "text") for c in SUBJECT_COLUMNS]
_ROW = itemgetter(*COLUMNS)
TIME_IN, TIME_OUT, SUBJECTS, DISCLOSED = (COLUMNS.index(c) for c in ("time_in", "time_out", "subject_hmacs",
                                                                      "user_disclosed"))  # fmt: skip
_TIMES = [COLUMNS.index(c) for c in TIME_COLUMNS]
_TEXT = postgres.types["text"]
_ARRAY_HEAD, _INT4 = struct.Struct("!iiIii").pack, struct.Struct("!i").pack
_EMPTY_ARRAY = struct.pack("!iiI", 0, 0, _TEXT.oid)


class ArrayDumper(Dumper):
    """text[] in binary for a list of str, as PostgreSQL's array_recv reads it (psycopg's own list dumper, written in
    Python for every element type, cost more than the rest of the row)."""

    format = Format.BINARY
    oid = _TEXT.array_oid

    def dump(self, obj: Any) -> bytes:
        if not obj:
            return _EMPTY_ARRAY
        parts = [_ARRAY_HEAD(1, 0, _TEXT.oid, len(obj), 1)]
        for item in obj:
            data = item.encode()
            parts += (_INT4(len(data)), data)
        return b"".join(parts)


def copy_row(record: dict[str, Any]) -> list[Any]:
    """A spool record as a COPY row in COLUMNS order: times as µs since 2000 (rounded as txlog_store.us rounds)."""
    try:
        row = list(_ROW(record))  # one C call for the whole row
    except KeyError:  # a record spooled before a field was added
        row = [record.get(c) for c in COLUMNS]
    for at in _TIMES:
        seconds = row[at]
        row[at] = round(seconds * 1_000_000) - PG_EPOCH_US if seconds else None
    if row[TIME_OUT] is None:
        row[TIME_OUT] = row[TIME_IN]
    if not row[SUBJECTS]:
        row[SUBJECTS] = []
    row[DISCLOSED] = bool(row[DISCLOSED])
    return row


def _copy(cursor: psycopg.Cursor[Any], table: str, columns: tuple[str, ...], types: list[str],
          rows: list[Any]) -> None:  # fmt: skip
    with cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN (FORMAT BINARY)") as copy:
        copy.set_types(types)
        for row in rows:
            copy.write_row(row)


def _partition(conn: psycopg.Connection[Any], parent: str, name: str, lo: datetime, hi: datetime) -> None:
    conn.execute(f"CREATE TABLE IF NOT EXISTS {name} PARTITION OF {parent} "
                 f"FOR VALUES FROM ('{lo.isoformat()}') TO ('{hi.isoformat()}')")  # fmt: skip


class PostgresStore:
    def __init__(self, url: str) -> None:
        self.url = url
        self._idle: list[psycopg.Connection[Any]] = []
        self._lock = threading.Lock()
        self._ready = False
        self._days: set[int] = set()  # partitions known to exist
        self._months: set[datetime] = set()

    # -- connections -----------------------------------------------------------------------------------------------

    @contextmanager
    def _conn(self) -> Iterator[psycopg.Connection[Any]]:
        """A pooled connection in a transaction (committed on success); any failure becomes StoreUnavailable."""
        with self._lock:
            conn = self._idle.pop() if self._idle else None
        try:
            if conn is None:
                conn = psycopg.connect(self.url, autocommit=True, **CONNECT)
            if not self._ready:
                with conn.transaction():
                    conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_ID,))
                    conn.execute(SCHEMA)  # a constant of several statements
                self._ready = True
            with conn.transaction():
                yield conn
        except ERRORS as exc:
            self._forget_partitions()  # a partition another gateway dropped (retention) is created again
            if conn is not None:
                conn.close()
            raise StoreUnavailable(f"the transaction-log store (PostgreSQL) failed: {exc}") from exc
        with self._lock:
            if len(self._idle) < MAX_IDLE:
                self._idle.append(conn)
                return
        conn.close()

    def _forget_partitions(self) -> None:
        self._days.clear()
        self._months.clear()

    def ensure_partitions(self, times: list[int]) -> None:
        """Create the missing day partitions of txlog and month partitions of txlog_subjects for these times (µs), in
        a transaction of their own (DDL must not wait on a batch)."""
        days = {t // DAY_US * DAY_US for t in times} - self._days
        months = {month_start(t) for t in times} - self._months
        if not days and not months:
            return
        with self._conn() as conn:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_ID,))
            for day in sorted(days):
                _partition(conn, "txlog", partition_name(day), ts(day), ts(day + DAY_US))
            for month in sorted(months):
                _partition(conn, "txlog_subjects", month_partition_name(month), month, next_month(month))
        self._days |= days
        self._months |= months

    # -- the Protocol ----------------------------------------------------------------------------------------------

    def ingest(self, batch: BatchId, lines: Sequence[bytes]) -> bool:
        """Binary COPY of the batch's rows into their day partitions, and of its tracker rows into their month
        partitions, in the transaction that checks and moves the watermark."""
        days: dict[int, list[list[Any]]] = {}
        months: dict[datetime, list[tuple[Any, ...]]] = {}
        month_of: dict[int, datetime] = {}
        for _, record in parse_lines(lines):
            row = copy_row(record)
            day = (row[TIME_IN] + PG_EPOCH_US) // DAY_US * DAY_US
            days.setdefault(day, []).append(row)
            tracked = subject_rows(row)
            if tracked:
                month = month_of.get(day) or month_of.setdefault(day, month_start(day))
                months.setdefault(month, []).extend(tracked)
        self.ensure_partitions(list(days))
        with self._conn() as conn:
            conn.execute("INSERT INTO txlog_batches (spool, applied) VALUES (%s, 0) ON CONFLICT DO NOTHING",
                         (batch.spool,))  # fmt: skip
            found = conn.execute("SELECT applied FROM txlog_batches WHERE spool = %s FOR UPDATE",
                                 (batch.spool,)).fetchone()  # fmt: skip
            if found is not None and int(found[0]) > batch.start:
                return False  # applied before (the shipper died before it noted so): nothing twice
            cursor = conn.cursor()
            cursor.adapters.register_dumper(None, ArrayDumper)  # this cursor's COPYs only
            for day, rows in days.items():
                _copy(cursor, partition_name(day), COLUMNS, COPY_TYPES, rows)
            for month, tracked_rows in months.items():
                _copy(cursor, month_partition_name(month), SUBJECT_COLUMNS, SUBJECT_COPY_TYPES, tracked_rows)
            conn.execute("UPDATE txlog_batches SET applied = %s, updated = now() WHERE spool = %s",
                         (batch.end, batch.spool))  # fmt: skip
        return True

    def watermark(self, spool: str) -> int:
        with self._conn() as conn:
            found = conn.execute("SELECT applied FROM txlog_batches WHERE spool = %s", (spool,)).fetchone()
        return int(found[0]) if found is not None else 0

    def query(self, filters: Filters, start_us: int, end_us: int, limit: int, after: Cursor | None = None) -> Page:
        clause, params = where(filters, start_us, end_us, after, DIALECT)
        sql = (f"SELECT {', '.join(CALL_FIELDS)} FROM txlog WHERE {clause} "  # noqa: S608  # columns are constants
               "ORDER BY time_in DESC, id DESC LIMIT %s")  # fmt: skip
        with self._conn() as conn:
            found = conn.execute(sql, [*params, limit]).fetchall()
        rows = []
        for values in found:
            row = dict(zip(CALL_FIELDS, values, strict=True))
            row["time_in"], row["time_out"] = micros(row["time_in"]), micros(row["time_out"])
            rows.append(row)
        return page_of(rows, limit)

    def accesses(self, hmacs: tuple[str, ...], start_us: int, end_us: int, now_us: int, limit: int,
                 after: Cursor | None, exclude_service: str | None) -> tuple[Page, int | None]:  # fmt: skip
        if not hmacs:
            return Page([], None), None
        (page_sql, page_params), (held_sql, held_params) = access_sql(
            hmacs, start_us, end_us, now_us, limit, after, exclude_service, DIALECT
        )
        with self._conn() as conn:
            found = conn.execute(page_sql, page_params).fetchall()
            held = conn.execute(held_sql, held_params).fetchone()
        rows = []
        for values in found:
            row = dict(zip(ACCESS_FIELDS, values, strict=True))
            row["time_in"] = micros(row["time_in"])
            rows.append(row)
        until = held[0] if held is not None else None
        return page_of(rows, limit), micros(until) if until is not None else None

    def latency(self, filters: Filters, start_us: int, end_us: int) -> Latency:
        clause, params = where(filters, start_us, end_us, None, DIALECT)
        sql = ("SELECT count(*), percentile_cont(ARRAY[0.5, 0.9, 0.99]) WITHIN GROUP "  # noqa: S608  # constants
               f"(ORDER BY duration_ms), max(duration_ms) FROM txlog WHERE {clause}")  # fmt: skip
        with self._conn() as conn:
            found = conn.execute(sql, params).fetchone()
        assert found is not None
        count, marks, top = found
        if not count:
            return Latency(0, None, None, None, None)
        return Latency(int(count), float(marks[0]), float(marks[1]), float(marks[2]), float(top))

    def health(self) -> tuple[bool, str]:
        try:
            with self._conn() as conn:
                conn.execute("SELECT 1")
        except StoreUnavailable as exc:
            return False, str(exc)
        return True, "postgresql"

    def partitions(self, table: str = "txlog") -> list[str]:
        """The partitions of txlog (days) or txlog_subjects (months), oldest first."""
        sql = ("SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
               "WHERE i.inhparent = %s::regclass ORDER BY c.relname")  # fmt: skip
        with self._conn() as conn:
            return [str(r[0]) for r in conn.execute(sql, (table,)).fetchall()]

    def drop_before(self, day_us: int, index_day_us: int | None = None) -> int:
        """Drop every day partition that ends at or before day_us, and every month partition of the tracker's index
        that ends at or before index_day_us (whole tables: no row-by-row delete)."""
        cutoff = partition_name(day_us)
        old = [name for name in self.partitions() if name < cutoff]
        index_day = day_us if index_day_us is None else index_day_us
        month_cutoff = month_partition_name(month_start(index_day))  # the month holding it has not ended by then
        old += [name for name in self.partitions("txlog_subjects") if name < month_cutoff]
        with self._conn() as conn:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_ID,))
            for name in old:
                conn.execute(f"DROP TABLE IF EXISTS {name}")
            # watermarks of spools shipped long ago: their files are gone
            conn.execute("DELETE FROM txlog_batches WHERE updated < %s", (ts(day_us),))
        self._forget_partitions()
        return len(old)

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()
