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
from datetime import datetime
from typing import Any

import psycopg

from policies.txlog_store import (
    ACCESS_FIELDS,
    CALL_FIELDS,
    COLUMNS,
    DAY_US,
    SUBJECT_COLUMNS,
    TIME_COLUMNS,
    TRACKED_ROLES,
    BatchId,
    Cursor,
    Dialect,
    Filters,
    Latency,
    Page,
    StoreUnavailable,
    access_page,
    access_sql,
    micros,
    month_start,
    next_month,
    parse_lines,
    ts,
    us,
    where,
)

log = logging.getLogger("lienthong.policies.txlog")

LOCK_ID = 0x7478_6C6F_67  # "txlog": serializes DDL (schema, partitions) across gateways
MAX_IDLE = 4  # pooled connections kept per store
# the tracker's one question: a person's records, newest first (bench/txlog_bench.py rebuilds it after a bulk load)
SUBJECT_INDEX = "CREATE INDEX IF NOT EXISTS txlog_subjects_hmac_time ON txlog_subjects (hmac, time_in DESC, id DESC)"
SCHEMA = f"""
CREATE TABLE IF NOT EXISTS txlog (
    id text NOT NULL, time_in timestamptz NOT NULL, time_out timestamptz NOT NULL, request_out timestamptz,
    response_in timestamptz, duration_ms double precision NOT NULL, client text, service text, endpoint text,
    method text NOT NULL, status integer NOT NULL, outcome text NOT NULL, error_type text,
    request_bytes bigint NOT NULL, response_bytes bigint NOT NULL, xroad_id text NOT NULL, user_id text, purpose text,
    subject_hmacs text[] NOT NULL, consumer_gateway text, provider_gateway text, gateway text NOT NULL,
    role text NOT NULL, grant_id text, withheld_until timestamptz, user_disclosed boolean NOT NULL DEFAULT false
) PARTITION BY RANGE (time_in);
-- a store made before the data tracker (issue 19) gains its columns
ALTER TABLE txlog ADD COLUMN IF NOT EXISTS grant_id text, ADD COLUMN IF NOT EXISTS withheld_until timestamptz,
    ADD COLUMN IF NOT EXISTS user_disclosed boolean NOT NULL DEFAULT false;
CREATE INDEX IF NOT EXISTS txlog_client_time ON txlog (client, time_in);
CREATE INDEX IF NOT EXISTS txlog_service_time ON txlog (service, time_in);
CREATE INDEX IF NOT EXISTS txlog_xroad_id ON txlog (xroad_id);
CREATE INDEX IF NOT EXISTS txlog_outcome_time ON txlog (outcome, time_in);
CREATE INDEX IF NOT EXISTS txlog_time ON txlog USING brin (time_in);
CREATE TABLE IF NOT EXISTS txlog_subjects (
    hmac text NOT NULL, time_in timestamptz NOT NULL, id text NOT NULL, client text, service text, endpoint text,
    method text NOT NULL, purpose text, outcome text NOT NULL, xroad_id text NOT NULL, user_id text,
    withheld_until timestamptz
) PARTITION BY RANGE (time_in);
{SUBJECT_INDEX};
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


def month_partition_name(month: datetime) -> str:
    return "txlog_s" + month.strftime("%Y%m")


def _subjects(hmacs: tuple[str, ...]) -> tuple[str, list[Any]]:
    return "subject_hmacs && %s::text[]", [list(hmacs)]


DIALECT = Dialect("%s", ts, _subjects)
# a spool line is one CSV field when neither quote nor delimiter can occur in it: JSON text holds no control character
STAGE_COPY = "COPY txlog_stage (doc) FROM STDIN WITH (FORMAT csv, QUOTE e'\\x01', DELIMITER e'\\x02')"
STAGE = "CREATE TEMP TABLE IF NOT EXISTS txlog_stage (doc text) ON COMMIT DELETE ROWS"
_TYPES = {"duration_ms": "float8", "status": "integer", "request_bytes": "bigint", "response_bytes": "bigint",
          "subject_hmacs": "text[]", "user_disclosed": "boolean", **{c: "float8" for c in TIME_COLUMNS}}  # fmt: skip
_EPOCH_US = "'epoch'::timestamptz + round(r.{0} * 1000000)::bigint * interval '1 microsecond'"  # as txlog_store.us
_VALUES = {"time_out": f"coalesce({_EPOCH_US.format('time_out')}, {_EPOCH_US.format('time_in')})",
           "subject_hmacs": "coalesce(r.subject_hmacs, '{}')", "user_disclosed": "coalesce(r.user_disclosed, false)",
           **{c: _EPOCH_US.format(c) for c in TIME_COLUMNS if c != "time_out"}}  # fmt: skip
# the staged JSON lines become rows in one statement, converted by the server (no per-row Python on the gateway);
# the rows it inserts feed the tracker's index in the same statement: one row per distinct HMAC of a record made
# where the data left, the official named only when the grant allows
_RECORD = ", ".join(f"{c} {_TYPES.get(c, 'text')}" for c in COLUMNS)
_SUBJECT_VALUES = {"hmac": "s.hmac", "user_id": "CASE WHEN ins.user_disclosed THEN ins.user_id END"}
STAGE_INSERT = (
    f"WITH ins AS (INSERT INTO txlog ({', '.join(COLUMNS)}) "  # noqa: S608  # constants
    f"SELECT {', '.join(_VALUES.get(c, f'r.{c}') for c in COLUMNS)} "
    f"FROM txlog_stage, json_to_record(txlog_stage.doc::json) AS r({_RECORD}) RETURNING *) "
    f"INSERT INTO txlog_subjects ({', '.join(SUBJECT_COLUMNS)}) "
    f"SELECT {', '.join(_SUBJECT_VALUES.get(c, f'ins.{c}') for c in SUBJECT_COLUMNS)} "
    "FROM ins, LATERAL (SELECT DISTINCT unnest(ins.subject_hmacs) AS hmac) AS s "
    f"WHERE ins.role IN ({', '.join(repr(r) for r in TRACKED_ROLES)})"
)


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
        """COPY the batch's JSON lines into a session staging table, then one INSERT ... SELECT converts them into
        txlog, in the transaction that checks and moves the watermark."""
        parsed = parse_lines(lines)
        self.ensure_partitions([us(record["time_in"]) for _, record in parsed])
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
        return access_page(rows, limit), micros(until) if until is not None else None

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

    def drop_before(self, day_us: int) -> int:
        """Drop every day partition that ends at or before day_us, and every month partition of the tracker's index
        that does (whole tables: no row-by-row delete)."""
        cutoff = partition_name(day_us)
        old = [name for name in self.partitions() if name < cutoff]
        month_cutoff = month_partition_name(month_start(day_us))  # the month holding day_us has not ended by then
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
