"""The ops API's view of the central transaction log (openapi/gateway-ops.yaml `/calls`, `/calls/latency`):
filtered, keyset-paged records newest first, as JSON or CSV, and exact latency percentiles.

A member's token narrows every query to records where its member is the consumer's or the provider's member (the
store filters, so paging stays exact); the operator sees all. `subject` arrives in clear and is only HMAC'd here
with the mesh's subject key, matched against the records' HMACs, and never stored or logged.
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import hmac
import io
import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

import connexion
import orjson
from connexion.lifecycle import ConnexionResponse

from gateway.ops_auth import Principal
from lienthong.problem import Problem, bad_request
from policies.audit import subject_key
from policies.chain import ChainConfig
from policies.meter_query import parse_time
from policies.txlog_store import (
    CALL_FIELDS,
    MESH_ROLES,
    Filters,
    StoreUnavailable,
    decode_cursor,
    default_url,
    encode_cursor,
    open_store,
    ts,
    us,
)

log = logging.getLogger("lienthong.gateway.ops")

DEFAULT_WINDOW_US = 86_400_000_000  # without `from`: the last 24 hours before `to`
CSV_TYPE = "text/csv; charset=utf-8"
FILTER_PARAMS = frozenset({"from", "to", "client", "service", "endpoint", "roles"})
CALLS_PARAMS = FILTER_PARAMS | {"outcome", "error_type", "xroad_id", "subject", "limit", "page_token", "format"}
T = TypeVar("T")


def iso(micros: int) -> str:
    return ts(micros).isoformat().replace("+00:00", "Z")


def window(from_: str | None, to: str | None, open_start: bool) -> tuple[int, int]:
    """[start, end) in µs: `to` default now, `from` default 24 hours earlier (the epoch when open_start)."""
    end = us(parse_time(to, "to").timestamp()) if to else us(time.time()) + 1
    start = us(parse_time(from_, "from").timestamp()) if from_ else (0 if open_start else end - DEFAULT_WINDOW_US)
    if end <= start:
        raise bad_request("to", "to must be after from")
    return start, end


def split_endpoint(value: str | None) -> tuple[str | None, str | None]:
    """(method, template): `GET /persons/{id}` as the meter names an endpoint, or the bare template."""
    if value is None:
        return None, None
    method, sep, template = value.strip().partition(" ")
    if sep and method.isalpha() and method.isupper() and template.startswith("/"):
        return method, template
    if not value.startswith("/"):
        raise bad_request("endpoint", "endpoint is a path template (/persons/{id}) or METHOD and template")
    return None, value


def of_call(xroad_id: str, keep: Callable[[dict[str, Any]], bool] | None) -> Callable[[dict[str, Any]], bool]:
    """An audit-record filter: the call's records (by X-Road-Id) among those `keep` lets the asker see."""
    return lambda record: record.get("transaction_id") == xroad_id and (keep is None or keep(record))


def refuse_unknown(allowed: frozenset[str]) -> None:
    """400 naming the first query parameter the operation does not take (a typo must not widen a query)."""
    unknown = sorted(set(connexion.request.query_params) - allowed)
    if unknown:
        raise bad_request(unknown[0][:60], f"unknown query parameter {unknown[0][:60]!r}")


def _cell(value: Any) -> Any:
    """A CSV cell a spreadsheet will not run: text starting with = + - @ (e.g. a caller's user id) is quoted."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def to_csv(rows: list[dict[str, Any]]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(CALL_FIELDS)
    for row in rows:
        writer.writerow([_cell(row[f]) if row[f] is not None else "" for f in CALL_FIELDS])
    return out.getvalue().encode()


def _response(body: bytes, kind: str, headers: dict[str, str] | None = None) -> ConnexionResponse:
    return ConnexionResponse(status_code=200, content_type=kind, mimetype=kind.split(";")[0], body=body,
                             headers={"Cache-Control": "no-store", **(headers or {})})  # fmt: skip


class CallsApi:
    """The two operations over one store (the mesh's, shared by every gateway)."""

    def __init__(self, cfg: ChainConfig) -> None:
        self.store = open_store(cfg.transaction_log_url or default_url(cfg.data_dir))
        key, _ = subject_key(cfg.audit_hmac_key)
        self._subject_mac = hmac.new(key, digestmod=hashlib.sha256)

    def _hmac(self, subject: str) -> str:
        mac = self._subject_mac.copy()
        mac.update(subject.strip().encode("utf-8", "surrogatepass"))
        return mac.hexdigest()

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            return await asyncio.to_thread(fn, *args)
        except StoreUnavailable as exc:
            log.warning("ops API: %s", exc)
            raise Problem(503, "storage-unavailable", "the transaction-log store cannot be reached",
                          headers={"Retry-After": "5"}) from None  # fmt: skip

    def filters(self, who: Principal, params: dict[str, Any], roles: str) -> Filters:
        for name, value in params.items():  # PostgreSQL text holds no NUL: refused here, not as a store failure
            if isinstance(value, str) and "\x00" in value:
                raise bad_request(name.rstrip("_"), f"{name.rstrip('_')} holds a NUL character")
        method, endpoint = split_endpoint(params.get("endpoint"))
        subject = params.get("subject")
        if subject is not None and not subject.strip():
            raise bad_request("subject", "subject is a personal ID")
        return Filters(
            client=params.get("client"), service=params.get("service"), endpoint=endpoint, method=method,
            outcome=params.get("outcome"), error_type=params.get("error_type"), xroad_id=params.get("xroad_id"),
            subject_hmacs=(self._hmac(subject),) if subject is not None else (),
            roles=MESH_ROLES if roles == "mesh" else (), member=None if who.operator else who.member,
        )  # fmt: skip

    async def calls(self, who: Principal, params: dict[str, Any]) -> ConnexionResponse:
        refuse_unknown(CALLS_PARAMS)
        limit = int(params.get("limit", 100))
        if not 1 <= limit <= 1000:
            raise bad_request("limit", "limit must be 1..1000")
        filters = self.filters(who, params, params.get("roles", "all"))
        start, end = window(params.get("from_"), params.get("to"), open_start=filters.xroad_id is not None)
        token = params.get("page_token")
        after = decode_cursor(token) if token else None
        page = await self._run(self.store.query, filters, start, end, limit, after)
        rows = [{**row, "time_in": iso(row["time_in"]), "time_out": iso(row["time_out"])} for row in page.rows]
        next_token = encode_cursor(page.next) if page.next is not None else None
        wanted = params.get("format_")  # connexion's name for `format`, a Python builtin
        if wanted == "csv" or (wanted is None and "text/csv" in connexion.request.headers.get("accept", "").lower()):
            return _response(to_csv(rows), CSV_TYPE, {"X-Next-Page-Token": next_token} if next_token else None)
        return _response(orjson.dumps({"calls": rows, "next_page_token": next_token}), "application/json")

    async def latency(self, who: Principal, params: dict[str, Any]) -> ConnexionResponse:
        refuse_unknown(FILTER_PARAMS)
        filters = self.filters(who, params, params.get("roles", "mesh"))
        start, end = window(params.get("from_"), params.get("to"), open_start=False)
        result = await self._run(self.store.latency, filters, start, end)
        body = {"count": result.count, "p50_ms": result.p50_ms, "p90_ms": result.p90_ms, "p99_ms": result.p99_ms,
                "max_ms": result.max_ms}  # fmt: skip
        return _response(orjson.dumps(body), "application/json")

    def close(self) -> None:
        self.store.close()
