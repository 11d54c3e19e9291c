"""The transaction log in PostgreSQL (psycopg 3): one table partitioned by day on time_in, fed through COPY.

Partitions (`txlog_pYYYYMMDD`) are created on demand, before the batch that needs one, under an advisory lock so
gateways that start a day together do not race; retention drops whole partitions, which costs no vacuum. The
watermark of every spool (`txlog_batches`) moves in the transaction that COPYs the batch's rows, so each batch is
stored exactly once (policies/txlog_store.py). The schema is whatever `search_path` names: a test gives
`options=-csearch_path=<schema>` in the URL.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg

from policies.txlog_store import (
    CALL_FIELDS,
    COLUMNS,
    DAY_US,
    TIME_COLUMNS,
    BatchId,
    Cursor,
    Dialect,
    Filters,
    Latency,
    Page,
    StoreUnavailable,
    micros,
    parse_lines,
    ts,
    us,
    where,
)

log = logging.getLogger("lienthong.policies.txlog")

LOCK_ID = 0x7478_6C6F_67  # "txlog": serializes DDL (schema, partitions) across gateways
MAX_IDLE = 4  # pooled connections kept per store
SCHEMA = """
CREATE TABLE IF NOT EXISTS txlog (
    id text NOT NULL, time_in timestamptz NOT NULL, time_out timestamptz NOT NULL, request_out timestamptz,
    response_in timestamptz, duration_ms double precision NOT NULL, client text, service text, endpoint text,
    method text NOT NULL, status integer NOT NULL, outcome text NOT NULL, error_type text,
    request_bytes bigint NOT NULL, response_bytes bigint NOT NULL, xroad_id text NOT NULL, user_id text, purpose text,
    subject_hmacs text[] NOT NULL, consumer_gateway text, provider_gateway text, gateway text NOT NULL,
    role text NOT NULL
) PARTITION BY RANGE (time_in);
CREATE INDEX IF NOT EXISTS txlog_client_time ON txlog (client, time_in);
CREATE INDEX IF NOT EXISTS txlog_service_time ON txlog (service, time_in);
CREATE INDEX IF NOT EXISTS txlog_xroad_id ON txlog (xroad_id);
CREATE INDEX IF NOT EXISTS txlog_outcome_time ON txlog (outcome, time_in);
CREATE INDEX IF NOT EXISTS txlog_time ON txlog USING brin (time_in);
CREATE TABLE IF NOT EXISTS txlog_batches (
    spool text PRIMARY KEY, applied bigint NOT NULL, updated timestamptz NOT NULL DEFAULT now()
);
"""
ERRORS = (psycopg.Error, OSError)
# a store that vanishes mid-query (a network partition) fails the call in seconds instead of hanging the shipper
CONNECT: dict[str, Any] = {"connect_timeout": 3, "application_name": "lienthong-txlog", "keepalives": 1,
                           "keepalives_idle": 5, "keepalives_interval": 2, "keepalives_count": 3,
                           "tcp_user_timeout": 10_000}  # fmt: skip


def partition_name(day_us: int) -> str:
    return "txlog_p" + ts(day_us).strftime("%Y%m%d")


def _subjects(hmacs: tuple[str, ...]) -> tuple[str, list[Any]]:
    return "subject_hmacs && %s::text[]", [list(hmacs)]


DIALECT = Dialect("%s", ts, _subjects)
# a spool line is one CSV field when neither quote nor delimiter can occur in it: JSON text holds no control character
STAGE_COPY = "COPY txlog_stage (doc) FROM STDIN WITH (FORMAT csv, QUOTE e'\\x01', DELIMITER e'\\x02')"
STAGE = "CREATE TEMP TABLE IF NOT EXISTS txlog_stage (doc text) ON COMMIT DELETE ROWS"
_TYPES = {"duration_ms": "float8", "status": "integer", "request_bytes": "bigint", "response_bytes": "bigint",
          "subject_hmacs": "text[]", **{c: "float8" for c in TIME_COLUMNS}}  # fmt: skip
_EPOCH_US = "'epoch'::timestamptz + round(r.{0} * 1000000)::bigint * interval '1 microsecond'"  # as txlog_store.us
_VALUES = {"time_out": f"coalesce({_EPOCH_US.format('time_out')}, {_EPOCH_US.format('time_in')})",
           "subject_hmacs": "coalesce(r.subject_hmacs, '{}')",
           **{c: _EPOCH_US.format(c) for c in TIME_COLUMNS if c != "time_out"}}  # fmt: skip
# the staged JSON lines become rows in one statement, converted by the server (no per-row Python on the gateway)
_RECORD = ", ".join(f"{c} {_TYPES.get(c, 'text')}" for c in COLUMNS)
STAGE_INSERT = (
    f"INSERT INTO txlog ({', '.join(COLUMNS)}) SELECT {', '.join(_VALUES.get(c, f'r.{c}') for c in COLUMNS)} "  # noqa: S608
    f"FROM txlog_stage, json_to_record(txlog_stage.doc::json) AS r({_RECORD})"
)


class PostgresStore:
    def __init__(self, url: str) -> None:
        self.url = url
        self._idle: list[psycopg.Connection[Any]] = []
        self._lock = threading.Lock()
        self._ready = False
        self._days: set[int] = set()  # partitions known to exist

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
            self._days.clear()  # a partition another gateway dropped (retention) is created again
            if conn is not None:
                conn.close()
            raise StoreUnavailable(f"the transaction-log store (PostgreSQL) failed: {exc}") from exc
        with self._lock:
            if len(self._idle) < MAX_IDLE:
                self._idle.append(conn)
                return
        conn.close()

    def _ensure_days(self, days: set[int]) -> None:
        """Create the missing day partitions, in a transaction of their own (DDL must not wait on a batch)."""
        missing = days - self._days
        if not missing:
            return
        with self._conn() as conn:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_ID,))
            for day in sorted(missing):
                lo, hi = ts(day).isoformat(), ts(day + DAY_US).isoformat()
                conn.execute(f"CREATE TABLE IF NOT EXISTS {partition_name(day)} PARTITION OF txlog "
                             f"FOR VALUES FROM ('{lo}') TO ('{hi}')")  # fmt: skip
        self._days |= missing

    # -- the Protocol ----------------------------------------------------------------------------------------------

    def ingest(self, batch: BatchId, lines: Sequence[bytes]) -> bool:
        """COPY the batch's JSON lines into a session staging table, then one INSERT ... SELECT converts them into
        txlog, in the transaction that checks and moves the watermark."""
        parsed = parse_lines(lines)
        self._ensure_days({us(record["time_in"]) // DAY_US * DAY_US for _, record in parsed})
        with self._conn() as conn:
            conn.execute("INSERT INTO txlog_batches (spool, applied) VALUES (%s, 0) ON CONFLICT DO NOTHING",
                         (batch.spool,))  # fmt: skip
            found = conn.execute("SELECT applied FROM txlog_batches WHERE spool = %s FOR UPDATE",
                                 (batch.spool,)).fetchone()  # fmt: skip
            if found is not None and int(found[0]) > batch.start:
                return False  # applied before (the shipper died before it noted so): nothing twice
            if parsed:
                conn.execute(STAGE)
                with conn.cursor().copy(STAGE_COPY) as copy:
                    copy.write(b"".join(line if line.endswith(b"\n") else line + b"\n" for line, _ in parsed))
                conn.execute(STAGE_INSERT)
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
        last = rows[-1] if len(rows) == limit else None
        return Page(rows, (last["time_in"], last["id"]) if last else None)

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

    def partitions(self) -> list[str]:
        """The day partitions, oldest first."""
        sql = ("SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
               "WHERE i.inhparent = 'txlog'::regclass ORDER BY c.relname")  # fmt: skip
        with self._conn() as conn:
            return [str(r[0]) for r in conn.execute(sql).fetchall()]

    def drop_before(self, day_us: int) -> int:
        """Drop every day partition that ends at or before day_us (whole tables: no row-by-row delete)."""
        cutoff = partition_name(day_us)
        old = [name for name in self.partitions() if name < cutoff]
        with self._conn() as conn:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_ID,))
            for name in old:
                conn.execute(f"DROP TABLE IF EXISTS {name}")
            # watermarks of spools shipped long ago: their files are gone
            conn.execute("DELETE FROM txlog_batches WHERE updated < %s", (ts(day_us),))
        self._days.clear()
        return len(old)

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()
