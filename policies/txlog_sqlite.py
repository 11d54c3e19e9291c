"""The transaction log in SQLite, for the demo and a mesh on one machine (no TRANSACTION_LOG_URL): one file in WAL
mode that every gateway of the local mesh writes, each batch in one IMMEDIATE transaction with its spool's watermark
(exactly once, as policies/txlog_store.py says). No partitions: retention deletes rows by time. Times are integer
microseconds; subject HMACs a JSON array.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson

from policies.txlog_store import (
    ACCESS_FIELDS,
    CALL_FIELDS,
    COLUMNS,
    SUBJECT_COLUMNS,
    BatchId,
    Cursor,
    Dialect,
    Filters,
    Latency,
    Page,
    StoreUnavailable,
    access_sql,
    latency_of,
    micros,
    month_start,
    page_of,
    parse_lines,
    row_of,
    subject_rows,
    where,
)

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS txlog ({", ".join(COLUMNS)});
CREATE INDEX IF NOT EXISTS txlog_client_time ON txlog (client, time_in);
CREATE INDEX IF NOT EXISTS txlog_service_time ON txlog (service, time_in);
CREATE INDEX IF NOT EXISTS txlog_xroad_id ON txlog (xroad_id);
CREATE INDEX IF NOT EXISTS txlog_outcome_time ON txlog (outcome, time_in);
CREATE INDEX IF NOT EXISTS txlog_time ON txlog (time_in);
CREATE TABLE IF NOT EXISTS txlog_subjects ({", ".join(SUBJECT_COLUMNS)});
CREATE INDEX IF NOT EXISTS txlog_subjects_hmac_time ON txlog_subjects (hmac, time_in DESC, id DESC);
CREATE TABLE IF NOT EXISTS txlog_batches (spool TEXT PRIMARY KEY, applied INTEGER NOT NULL, updated INTEGER);
"""
SUBJECTS_AT = COLUMNS.index("subject_hmacs")


def _subjects(hmacs: tuple[str, ...]) -> tuple[str, list[Any]]:
    marks = ", ".join("?" * len(hmacs))
    return f"EXISTS (SELECT 1 FROM json_each(subject_hmacs) WHERE value IN ({marks}))", list(hmacs)  # noqa: S608


DIALECT = Dialect("?", lambda micros: micros, _subjects)
_MARKS = ", ".join("?" * len(SUBJECT_COLUMNS))
INSERT_SUBJECT = f"INSERT INTO txlog_subjects ({', '.join(SUBJECT_COLUMNS)}) VALUES ({_MARKS})"  # noqa: S608


def _add_missing_columns(conn: sqlite3.Connection) -> None:
    """A file made before the data tracker (issue 19) gains its columns (SQLite has no ADD COLUMN IF NOT EXISTS)."""
    have = {str(r[1]) for r in conn.execute("PRAGMA table_info(txlog)")}
    for name in COLUMNS:
        if name not in have:
            conn.execute(f"ALTER TABLE txlog ADD COLUMN {name}")


class SqliteStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()  # one connection per thread: sqlite3 objects stay in their thread

    @contextmanager
    def _conn(self, write: bool = False) -> Iterator[sqlite3.Connection]:
        try:
            conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
            if conn is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")  # WAL: a commit survives a crash of the process
                conn.executescript(SCHEMA)
                _add_missing_columns(conn)
                self._local.conn = conn
            conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        except (sqlite3.Error, OSError) as exc:
            raise StoreUnavailable(f"the transaction-log store (SQLite {self.path}) failed: {exc}") from exc

    def ingest(self, batch: BatchId, lines: Sequence[bytes]) -> bool:
        rows, subjects = [], []
        for _, record in parse_lines(lines):
            row = list(row_of(record))
            subjects += subject_rows(tuple(row))
            row[SUBJECTS_AT] = orjson.dumps(row[SUBJECTS_AT]).decode()
            rows.append(row)
        with self._conn(write=True) as conn:
            found = conn.execute("SELECT applied FROM txlog_batches WHERE spool = ?", (batch.spool,)).fetchone()
            if found is not None and int(found[0]) > batch.start:
                return False
            marks = ", ".join("?" * len(COLUMNS))
            conn.executemany(f"INSERT INTO txlog ({', '.join(COLUMNS)}) VALUES ({marks})", rows)  # noqa: S608
            conn.executemany(INSERT_SUBJECT, subjects)
            conn.execute("INSERT INTO txlog_batches (spool, applied, updated) VALUES (?, ?, strftime('%s')) "
                         "ON CONFLICT (spool) DO UPDATE SET applied = excluded.applied, updated = excluded.updated",
                         (batch.spool, batch.end))  # fmt: skip
        return True

    def watermark(self, spool: str) -> int:
        with self._conn() as conn:
            found = conn.execute("SELECT applied FROM txlog_batches WHERE spool = ?", (spool,)).fetchone()
        return int(found[0]) if found is not None else 0

    def query(self, filters: Filters, start_us: int, end_us: int, limit: int, after: Cursor | None = None) -> Page:
        clause, params = where(filters, start_us, end_us, after, DIALECT)
        sql = (f"SELECT {', '.join(CALL_FIELDS)} FROM txlog WHERE {clause} "  # noqa: S608  # columns are constants
               "ORDER BY time_in DESC, id DESC LIMIT ?")  # fmt: skip
        with self._conn() as conn:
            rows = [dict(zip(CALL_FIELDS, values, strict=True)) for values in conn.execute(sql, [*params, limit])]
        return page_of(rows, limit)

    def accesses(self, hmacs: tuple[str, ...], start_us: int, end_us: int, now_us: int, limit: int,
                 after: Cursor | None, exclude_service: str | None) -> tuple[Page, int | None]:  # fmt: skip
        if not hmacs:
            return Page([], None), None
        (page_sql, page_params), (held_sql, held_params) = access_sql(
            hmacs, start_us, end_us, now_us, limit, after, exclude_service, DIALECT
        )
        with self._conn() as conn:
            rows = [dict(zip(ACCESS_FIELDS, values, strict=True)) for values in conn.execute(page_sql, page_params)]
            held = conn.execute(held_sql, held_params).fetchone()
        return page_of(rows, limit), held[0] if held is not None else None

    def latency(self, filters: Filters, start_us: int, end_us: int) -> Latency:
        clause, params = where(filters, start_us, end_us, None, DIALECT)
        sql = f"SELECT duration_ms FROM txlog WHERE {clause} ORDER BY duration_ms"  # noqa: S608
        with self._conn() as conn:
            ordered = [float(r[0]) for r in conn.execute(sql, params)]
        return latency_of(ordered)

    def health(self) -> tuple[bool, str]:
        try:
            with self._conn() as conn:
                conn.execute("SELECT 1")
        except StoreUnavailable as exc:
            return False, str(exc)
        return True, f"sqlite {self.path}"

    def drop_before(self, day_us: int, index_day_us: int | None = None) -> int:
        index_day = day_us if index_day_us is None else index_day_us
        with self._conn(write=True) as conn:
            gone = conn.execute("DELETE FROM txlog WHERE time_in < ?", (day_us,)).rowcount
            # the tracker's index by whole months, as PostgreSQL drops its month partitions
            gone += conn.execute("DELETE FROM txlog_subjects WHERE time_in < ?",
                                 (micros(month_start(index_day)),)).rowcount  # fmt: skip
            conn.execute("DELETE FROM txlog_batches WHERE updated < ?", (day_us // 1_000_000,))
        return gone

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
