"""The gateway's operations API (openapi/gateway-ops.yaml, connexion 3 under /ops/v1): mesh-wide transaction counts
and latency from the shared Redis, this gateway's audit records by time window, its configuration health, the whole
mesh's health from the gateways' heartbeats, and the dashboard page (gateway/dashboard/) over those queries.

The gateway mounts it at /ops/v1 by stripping the prefix into root_path; this app puts the prefix back so connexion
routes on the full path whichever way it is mounted (or served alone by uvicorn in tests).
"""

from __future__ import annotations

import asyncio
import base64
import heapq
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import connexion
import orjson
import redis
from connexion.lifecycle import ConnexionResponse
from connexion.resolver import Resolver
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.ops_heartbeat import Heartbeat, gateway_health
from lienthong.api_problems import add_problem_handlers, validator_map
from lienthong.problem import Problem, bad_request
from lienthong.redis_connection import sync_client
from lienthong.snapshot import Snapshot
from policies.audit_log import iter_records
from policies.chain import ChainConfig
from policies.meter_query import (
    MESH_ROLES,
    SERIES_GROUPS,
    DayCache,
    error_rates,
    latency,
    parse_group_by,
    parse_time,
    parse_window,
    service_latency,
    timeseries,
    top_consumers,
    transactions,
)

SPEC = Path(__file__).resolve().parent.parent / "openapi" / "gateway-ops.yaml"
BASE = "/ops/v1"
MAX_PAGE = 10_000
DASHBOARD_DIR = Path(__file__).resolve().parent / "dashboard"
ASSET_TYPES = {".html": "text/html; charset=utf-8", ".js": "application/javascript; charset=utf-8",
               ".css": "text/css; charset=utf-8"}  # fmt: skip
# the page may load only its own files and call only this API: nothing from the internet, no inline script
DASHBOARD_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
                 "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")  # fmt: skip


class OpsHandlers:
    """The operations, bound to one gateway's config (no module-level state: several gateways may share a process)."""

    def __init__(self, cfg: ChainConfig, snapshot_getter: Callable[[], Snapshot | None]) -> None:
        self.cfg = cfg
        self.snapshot_getter = snapshot_getter
        self._redis: redis.Redis | None = None
        self.heartbeat = Heartbeat(cfg.gateway, lambda: self.redis, snapshot_getter)
        self.days = DayCache()

    @property
    def redis(self) -> redis.Redis:
        if self._redis is None:
            self._redis = sync_client(self.cfg.redis_url)
        return self._redis

    async def _query(self, fn: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
        try:
            return await asyncio.to_thread(fn, self.redis, *args)
        except redis.RedisError:
            raise Problem(503, "storage-unavailable", "the shared Redis cannot be reached",
                          headers={"Retry-After": "5"}) from None  # fmt: skip

    async def transactions(self, from_: str, to: str, group_by: str = "", roles: str = "mesh") -> ConnexionResponse:
        start, end = parse_time(from_, "from"), parse_time(to, "to")
        groups = parse_group_by(group_by)
        if roles not in ("mesh", "all"):
            raise bad_request("roles", "roles must be mesh or all")
        result = await self._query(transactions, start, end, groups, MESH_ROLES if roles == "mesh" else None)
        return _json({"from": _iso(start), "to": _iso(end), "group_by": groups, "roles": roles, **result})

    async def latency(self, from_: str, to: str, service: str | None = None) -> ConnexionResponse:
        start, end = parse_time(from_, "from"), parse_time(to, "to")
        return _json(await self._query(latency, start, end, service or None))

    async def audit(self, from_: str, to: str, limit: int = 1000, page_token: str | None = None) -> ConnexionResponse:
        start, end = parse_time(from_, "from"), parse_time(to, "to")
        if end <= start:
            raise bad_request("to", "to must be after from")
        if not 1 <= limit <= MAX_PAGE:
            raise bad_request("limit", f"limit must be 1..{MAX_PAGE}")
        after = _decode_token(page_token) if page_token else None
        lo, hi = int(start.timestamp() * 1000), int(end.timestamp() * 1000)
        directory = self.cfg.data_dir / "audit"
        page = await asyncio.to_thread(_audit_page, directory, lo, hi, after, limit)
        token = _encode_token(_sort_key(page[-1])) if len(page) == limit else None
        return _json({"records": [rec for _, rec in page], "next_page_token": token})

    async def timeseries(self, window: str = "hour", group_by: str = "service") -> ConnexionResponse:
        if group_by not in SERIES_GROUPS:
            raise bad_request("group_by", f"group_by must be one of {', '.join(SERIES_GROUPS)}")
        return _json(await self._query(timeseries, parse_window(window), group_by, _now(), self.days))

    async def top_consumers(self, window: str = "hour", limit: int = 10) -> ConnexionResponse:
        if not 1 <= limit <= 100:
            raise bad_request("limit", "limit must be 1..100")
        return _json(await self._query(top_consumers, parse_window(window), limit, _now(), self.days))

    async def errors(self, window: str = "hour") -> ConnexionResponse:
        return _json(await self._query(error_rates, parse_window(window), _now(), self.days))

    async def service_latency(self, window: str = "hour") -> ConnexionResponse:
        return _json(await self._query(service_latency, parse_window(window), _now()))

    async def gateways(self) -> ConnexionResponse:
        snap = self.snapshot_getter()
        known = sorted(snap.gateways) if snap is not None else [self.cfg.gateway]
        return _json(await self._query(gateway_health, known))

    async def dashboard(self) -> ConnexionResponse:
        return _asset("index.html")

    async def dashboard_asset(self, asset: str) -> ConnexionResponse:
        return _asset(asset)

    async def health(self) -> ConnexionResponse:
        snap = self.snapshot_getter()
        if snap is None:
            return _json({"gateway": self.cfg.gateway, "status": "no-snapshot", "snapshot": None})
        info = {"version": snap.version, "age_seconds": round(snap.age(time.time()), 3),
                "generated_at": snap.doc.get("generated_at")}  # fmt: skip
        return _json({"gateway": self.cfg.gateway, "status": "ok", "snapshot": info})


SortKey = tuple[int, str, int, int]
AuditItem = tuple[int, dict[str, Any]]  # (slot, record)


def _sort_key(item: AuditItem) -> SortKey:
    slot, rec = item
    return (int(rec["request_in_ts"]), str(rec.get("transaction_id") or ""), slot, int(rec.get("seq", 0)))


def _audit_page(directory: Path, lo: int, hi: int, after: SortKey | None, limit: int) -> list[AuditItem]:
    """The `limit` smallest records (time, transaction, slot, seq) in [lo, hi) past `after`: one pass, bounded heap."""
    if not directory.is_dir():
        return []
    candidates = (
        (_sort_key(item), item)
        for item in iter_records(directory)
        if isinstance(item[1].get("request_in_ts"), int) and lo <= item[1]["request_in_ts"] < hi
    )
    if after is not None:
        candidates = (c for c in candidates if c[0] > after)
    return [item for _, item in heapq.nsmallest(limit, candidates, key=lambda c: c[0])]


def _encode_token(key: SortKey) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(list(key))).decode().rstrip("=")


def _decode_token(token: str) -> SortKey:
    try:
        raw = orjson.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        ts, tx, slot, seq = raw
        return (int(ts), str(tx), int(slot), int(seq))
    except (ValueError, TypeError, orjson.JSONDecodeError):
        raise bad_request("page_token", "page_token is not one this API gave out") from None


def _now() -> datetime:
    return datetime.now(UTC)


def _asset(name: str) -> ConnexionResponse:
    """A file of gateway/dashboard/ by its plain name (no folders, so no way out of it)."""
    path = DASHBOARD_DIR / name
    kind = ASSET_TYPES.get(path.suffix)
    if "/" in name or "\\" in name or name.startswith(".") or kind is None or not path.is_file():
        raise Problem(404, "not-found", f"the dashboard has no file {name[:60]!r}", field="asset")
    headers = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff",
               "Content-Security-Policy": DASHBOARD_CSP}  # fmt: skip
    return ConnexionResponse(status_code=200, content_type=kind, mimetype=kind.split(";")[0], body=path.read_bytes(),
                             headers=headers)  # fmt: skip


def _json(body: dict[str, Any]) -> ConnexionResponse:
    return ConnexionResponse(status_code=200, content_type="application/json", mimetype="application/json",
                             body=orjson.dumps(body))  # fmt: skip


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


class _FullPath:
    """Give connexion the full /ops/v1/... path even when the caller stripped it into root_path; start the heartbeat
    on the first request if the app was built before the event loop ran (the gateway passes no lifespan events)."""

    def __init__(self, app: ASGIApp, heartbeat: Heartbeat) -> None:
        self.app = app
        self.heartbeat = heartbeat

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            self.heartbeat.start()
            path = scope.get("path", "")
            if not (path == BASE or path.startswith(BASE + "/")):
                scope = dict(scope)
                root = scope.get("root_path", "")
                scope["root_path"] = root[: -len(BASE)] if root.endswith(BASE) else root
                scope["path"] = BASE + (path if path != "/" else "")
                raw = scope.get("raw_path")
                if raw is not None:
                    scope["raw_path"] = BASE.encode() + (raw if raw != b"/" else b"")
        await self.app(scope, receive, send)


def build_ops_app(cfg: ChainConfig, snapshot_getter: Callable[[], Snapshot | None]) -> ASGIApp:
    """The ASGI app for /ops/v1 of one gateway."""
    handlers = OpsHandlers(cfg, snapshot_getter)
    app = connexion.AsyncApp(__name__, validator_map=validator_map(body=False))
    app.add_api(
        SPEC,
        base_path=BASE,
        resolver=Resolver(function_resolver=lambda operation_id: getattr(handlers, operation_id)),
        pythonic_params=True,
        swagger_ui_options=connexion.options.SwaggerUIOptions(swagger_ui_path="/ui"),
    )
    add_problem_handlers(app, "gateway operations API")
    handlers.heartbeat.start()  # the gateway builds this app on its running loop, so it beats from the start
    return _FullPath(app, handlers.heartbeat)
