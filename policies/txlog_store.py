"""The central transaction log's store, behind one typed Protocol: PostgreSQL for deployments
(policies/txlog_postgres.py: day partitions, COPY ingest) and SQLite for the demo (policies/txlog_sqlite.py).

A store takes batches exactly once: `ingest(batch, lines)` (the spool's JSON lines, as the txlog policy wrote them)
applies a spool's byte range [start, end) only when the
store's watermark for that spool has not passed `start`, and moves the watermark to `end` in the same transaction as
the rows, so a shipper that dies between "stored" and "noted" and ships the range again stores nothing twice
(policies/txlog_ship.py). Times in and out of a store are integer microseconds since the epoch (UTC): exact keys
for keyset paging, whatever the backend's own type.
"""

from __future__ import annotations

import base64
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from operator import itemgetter
from pathlib import Path
from typing import Any, Protocol

import orjson

from lienthong.problem import bad_request

log = logging.getLogger("lienthong.policies.txlog")

# the stored columns, in COPY / INSERT order
COLUMNS = (
    "id", "time_in", "time_out", "request_out", "response_in", "duration_ms", "client", "service", "endpoint",
    "method", "status", "outcome", "error_type", "request_bytes", "response_bytes", "xroad_id", "user_id", "purpose",
    "subject_hmacs", "consumer_gateway", "provider_gateway", "gateway", "role", "grant_id", "withheld_until",
    "user_disclosed",
)  # fmt: skip
# what a query answers for each call (no subject HMACs: they are for matching, not for reading)
CALL_FIELDS = (
    "id", "time_in", "time_out", "duration_ms", "client", "service", "endpoint", "method", "status", "outcome",
    "error_type", "request_bytes", "response_bytes", "xroad_id", "user_id", "purpose", "consumer_gateway",
    "provider_gateway", "gateway", "role",
)  # fmt: skip
TIME_COLUMNS = ("time_in", "time_out", "request_out", "response_in", "withheld_until")
MESH_ROLES = ("home", "local")  # the consumer's home gateway's record: each call once
# the data tracker's index (issue 19): one row per (record, subject HMAC), only where the data left (one per call)
TRACKED_ROLES = ("provider", "local")
SUBJECT_COLUMNS = ("hmac", "time_in", "id", "client", "service", "endpoint", "method", "purpose", "outcome", "xroad_id",
                   "user_id", "withheld_until")  # fmt: skip
ACCESS_FIELDS = SUBJECT_COLUMNS[1:-1]  # what accesses() answers per record
DAY_US = 86_400_000_000
SQLITE_FILE = "txlog.sqlite3"

Cursor = tuple[int, str]  # (time_in µs, id) of the last row of a page: the next page starts below it


class StoreUnavailable(Exception):
    """The store cannot be reached or failed; the caller retries (shipper) or answers 503 (ops API)."""


@dataclass(frozen=True, slots=True)
class BatchId:
    """A spool's byte range: `spool` names the file mesh-wide (<gateway>/<file id>), [start, end) its bytes."""

    spool: str
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class Filters:
    """Every filter the ops API offers; None / empty matches all."""

    client: str | None = None
    service: str | None = None
    endpoint: str | None = None
    method: str | None = None
    outcome: str | None = None
    error_type: str | None = None
    xroad_id: str | None = None
    subject_hmacs: tuple[str, ...] = ()  # records holding any of them
    roles: tuple[str, ...] = ()
    member: str | None = None  # a member's view: records where it is the consumer's or the provider's member


@dataclass(frozen=True, slots=True)
class Page:
    rows: list[dict[str, Any]]  # CALL_FIELDS, times in µs
    next: Cursor | None


@dataclass(frozen=True, slots=True)
class Latency:
    count: int
    p50_ms: float | None
    p90_ms: float | None
    p99_ms: float | None
    max_ms: float | None


class TxlogStore(Protocol):
    def ingest(self, batch: BatchId, lines: Sequence[bytes]) -> bool:
        """Store the batch's records (JSON lines; one that is no record is logged and skipped) and move its spool's
        watermark to batch.end, atomically; False (storing
        nothing) when the watermark already passed batch.start."""
        ...

    def watermark(self, spool: str) -> int:
        """How far the store has applied the spool (0: nothing yet)."""
        ...

    def query(self, filters: Filters, start_us: int, end_us: int, limit: int, after: Cursor | None = None) -> Page:
        """Matching records with start <= time_in < end, newest first (time_in, then id, descending)."""
        ...

    def accesses(self, hmacs: tuple[str, ...], start_us: int, end_us: int, now_us: int, limit: int,
                 after: Cursor | None, exclude_service: str | None) -> tuple[Page, int | None]:  # fmt: skip
        """The data tracker's question: records (ACCESS_FIELDS) of the provider side holding any of the hmacs, with
        start <= time_in < end, service != exclude_service and not withheld at now (withheld_until unset or <= now),
        newest first, keyset paged, one row per record; and the latest withheld_until (µs) of those in the window
        still withheld, or None."""
        ...

    def latency(self, filters: Filters, start_us: int, end_us: int) -> Latency:
        """Exact percentiles (linear interpolation, as PostgreSQL's percentile_cont) of duration_ms."""
        ...

    def health(self) -> tuple[bool, str]:
        """(reachable, a short detail for the health page)."""
        ...

    def drop_before(self, day_us: int, index_day_us: int | None = None) -> int:
        """Retention: forget records with time_in before this UTC midnight, and the tracker's index of each month that
        ended by `index_day_us` (default the same day: the index may be kept longer, issue 19); returns how many
        partitions (PostgreSQL) or rows (SQLite) went."""
        ...

    def close(self) -> None: ...


def default_url(data_dir: Path) -> str:
    """The demo's store when no TRANSACTION_LOG_URL is set: SQLite in the gateway's data dir."""
    return f"sqlite:///{(data_dir / SQLITE_FILE).resolve()}"


def open_store(url: str) -> TxlogStore:
    """A store for a URL: postgresql://... (libpq; `options=-csearch_path=S` picks a schema) or sqlite:///PATH.
    Nothing is connected yet: a store that is down fails its first call, not this one."""
    scheme = url.split(":", 1)[0].lower()
    if scheme in ("postgresql", "postgres", "postgresql+psycopg"):
        from policies.txlog_postgres import PostgresStore

        return PostgresStore(url.replace("postgresql+psycopg:", "postgresql:", 1))
    if scheme == "sqlite":
        from policies.txlog_sqlite import SqliteStore

        path = url.removeprefix("sqlite:///") if url.startswith("sqlite:///") else ""
        if not path:
            raise ValueError(f"transaction log URL {url!r}: sqlite:///PATH expected")
        return SqliteStore(Path(path))
    raise ValueError(f"transaction log URL {url!r}: only postgresql:// and sqlite:/// are supported")


def percentile(ordered: Sequence[float], fraction: float) -> float:
    """percentile_cont: linear interpolation between the values around position fraction * (n - 1)."""
    position = fraction * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def latency_of(ordered: Sequence[float]) -> Latency:
    if not ordered:
        return Latency(0, None, None, None, None)
    return Latency(len(ordered), percentile(ordered, 0.5), percentile(ordered, 0.9), percentile(ordered, 0.99),
                   ordered[-1])  # fmt: skip


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def ts(micros: int) -> datetime:
    return EPOCH + timedelta(microseconds=micros)


def micros(value: datetime) -> int:
    delta = value - EPOCH
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


def us(seconds: float) -> int:
    return round(seconds * 1_000_000)


def parse_lines(lines: Sequence[bytes]) -> list[tuple[bytes, dict[str, Any]]]:
    """(line, record) of every line that is a record; any other (a damaged disk) is logged and skipped, since it
    could never be stored and would hold back every record behind it."""
    parsed = []
    for line in lines:
        try:
            record = orjson.loads(line)
            if not isinstance(record["id"], str) or not isinstance(record["time_in"], int | float):
                raise TypeError("id or time_in")
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            log.error("txlog: skipping a spool line that is no record (%r): %.200r", exc, line)
            continue
        parsed.append((line, record))
    return parsed


def row_of(record: dict[str, Any]) -> tuple[Any, ...]:
    """A spool record (times in epoch seconds) as a row in COLUMNS order, times in µs (None when unset)."""
    values = []
    for name in COLUMNS:
        value = record.get(name)
        if name in TIME_COLUMNS:
            value = us(value) if value else None
        elif name == "subject_hmacs":
            value = list(value or ())
        values.append(value)
    if values[2] is None:  # time_out: a record always has one
        values[2] = values[1]
    values[USER_DISCLOSED_AT] = bool(values[USER_DISCLOSED_AT])  # absent in records spooled before issue 19
    return tuple(values)


USER_DISCLOSED_AT = COLUMNS.index("user_disclosed")
_ROLE_AT, _SUBJECTS_AT = COLUMNS.index("role"), COLUMNS.index("subject_hmacs")
_SHARED = itemgetter(*(COLUMNS.index(name) for name in SUBJECT_COLUMNS[1:]))
_USER_AT = SUBJECT_COLUMNS.index("user_id") - 1


def subject_rows(row: Sequence[Any]) -> list[tuple[Any, ...]]:
    """The tracker index's rows (SUBJECT_COLUMNS) of one stored row (COLUMNS): one per distinct subject HMAC, none
    unless the data left at this gateway; the official only when the grant lets the person see them."""
    if row[_ROLE_AT] not in TRACKED_ROLES or not row[_SUBJECTS_AT]:
        return []
    shared = _SHARED(row)
    if not row[USER_DISCLOSED_AT]:
        shared = (*shared[:_USER_AT], None, *shared[_USER_AT + 1 :])
    return [(hmac, *shared) for hmac in dict.fromkeys(row[_SUBJECTS_AT])]


def month_start(micros_: int) -> datetime:
    """The UTC month holding this instant, as its first midnight."""
    return ts(micros_).replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def next_month(month: datetime) -> datetime:
    return month.replace(year=month.year + month.month // 12, month=month.month % 12 + 1)


@dataclass(frozen=True, slots=True)
class Dialect:
    """What differs between the SQL of the two stores' queries."""

    mark: str  # the parameter placeholder
    time: Any  # µs -> the value compared with time_in
    subjects: Any  # tuple of HMACs -> (condition, params)


def like_prefix(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def where(filters: Filters, start_us: int, end_us: int, after: Cursor | None, d: Dialect) -> tuple[str, list[Any]]:
    """The WHERE clause of a query (no leading keyword) and its parameters."""
    m = d.mark
    sql = [f"time_in >= {m}", f"time_in < {m}"]
    params: list[Any] = [d.time(start_us), d.time(end_us)]
    for column in ("client", "service", "endpoint", "method", "outcome", "error_type", "xroad_id"):
        value = getattr(filters, column)
        if value is not None:
            sql.append(f"{column} = {m}")
            params.append(value)
    if filters.roles:
        sql.append(f"role IN ({', '.join([m] * len(filters.roles))})")
        params += filters.roles
    if filters.member is not None:
        prefix = like_prefix(filters.member + "/")
        sql.append(f"(client LIKE {m} ESCAPE '\\' OR service LIKE {m} ESCAPE '\\')")
        params += [prefix, prefix]
    if filters.subject_hmacs:
        condition, values = d.subjects(filters.subject_hmacs)
        sql.append(condition)
        params += values
    if after is not None:
        sql.append(f"(time_in < {m} OR (time_in = {m} AND id < {m}))")
        params += [d.time(after[0]), d.time(after[0]), after[1]]
    return " AND ".join(sql), params


Statement = tuple[str, list[Any]]


def access_sql(hmacs: tuple[str, ...], start_us: int, end_us: int, now_us: int, limit: int, after: Cursor | None,
               exclude_service: str | None, d: Dialect) -> tuple[Statement, Statement]:  # fmt: skip
    """accesses()' two statements, (sql, params) each: the page, and the latest withheld_until still in force."""
    m = d.mark
    sql = [f"hmac IN ({', '.join([m] * len(hmacs))})", f"time_in >= {m}", f"time_in < {m}"]
    params: list[Any] = [*hmacs, d.time(start_us), d.time(end_us)]
    if exclude_service is not None:
        sql.append(f"(service IS NULL OR service <> {m})")
        params.append(exclude_service)
    now = d.time(now_us)
    held = (f"SELECT max(withheld_until) FROM txlog_subjects WHERE {' AND '.join(sql)} "  # noqa: S608  # constants
            f"AND withheld_until > {m}", [*params, now])  # fmt: skip
    sql.append(f"(withheld_until IS NULL OR withheld_until <= {m})")
    params.append(now)
    if after is not None:
        sql.append(f"(time_in < {m} OR (time_in = {m} AND id < {m}))")
        params += [d.time(after[0]), d.time(after[0]), after[1]]
    # a record is indexed once per distinct HMAC, so only several HMACs (a rotated key) can find it twice; one HMAC
    # keeps the plain form, which reads the index newest first and stops at the limit
    distinct = "DISTINCT " if len(set(hmacs)) > 1 else ""
    page = (f"SELECT {distinct}{', '.join(ACCESS_FIELDS)} FROM txlog_subjects WHERE {' AND '.join(sql)} "  # noqa: S608
            f"ORDER BY time_in DESC, id DESC LIMIT {m}", [*params, limit])  # fmt: skip
    return page, held


def encode_cursor(cursor: Cursor) -> str:
    """A page token for the row a page ended at (opaque to callers, base64url JSON)."""
    return base64.urlsafe_b64encode(orjson.dumps(list(cursor))).decode().rstrip("=")


def decode_cursor(token: str) -> Cursor:
    """The cursor of a page token encode_cursor gave out; 400 naming page_token for anything else."""
    try:
        at, ident = orjson.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        if not isinstance(at, int) or not isinstance(ident, str):
            raise TypeError
        return at, ident
    except (ValueError, TypeError, orjson.JSONDecodeError):
        raise bad_request("page_token", "page_token is not one this API gave out") from None


def page_of(rows: list[dict[str, Any]], limit: int) -> Page:
    """A keyset page: a full one carries the cursor of its last row, a short one is the last page."""
    last = rows[-1] if len(rows) == limit and rows else None
    return Page(rows, (last["time_in"], last["id"]) if last else None)
