"""The gateway's operations API (openapi/gateway-ops.yaml, connexion 3 under /ops/v1): mesh-wide transaction counts
and latency from the shared Redis, this gateway's audit records by time window, its configuration health, the whole
mesh's health from the gateways' heartbeats, and the dashboard page (gateway/dashboard/) over those queries.

Every request passes `_Guard` first: its Host must name this gateway (else 421, gateway/ops_auth.py) and, except
for what the spec marks `security: []` (the dashboard's own page and files, which hold no data, and connexion's
copy of the spec with its Swagger UI), it needs a bearer token (else 401; an unknown path too, so nothing can be
mapped without one). The verified principal reaches the handlers through a context variable; a member's token
narrows every answer to the calls its member made or served.

The gateway mounts it at /ops/v1 by stripping the prefix into root_path; this app puts the prefix back so connexion
routes on the full path whichever way it is mounted (or served alone by uvicorn in tests).
"""

from __future__ import annotations

import asyncio
import base64
import re
import time
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import connexion
import orjson
import redis
import yaml
from connexion.lifecycle import ConnexionResponse
from connexion.resolver import Resolver
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway import alerts, metrics
from gateway.ops_auth import OpsGate, Principal
from gateway.ops_calls import CallsApi, of_call
from gateway.ops_components import Local, components
from gateway.ops_heartbeat import Heartbeat, gateway_health
from lienthong.api_problems import add_problem_handlers, validator_map
from lienthong.problem import PROBLEM_MEDIA_TYPE, Problem, bad_request
from lienthong.redis_connection import sync_single_client
from lienthong.snapshot import Snapshot
from policies.audit_log import AuditIndex, SortKey, sort_key
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

# who asks, set by _Guard for the request being handled (each request runs in a task of its own)
_PRINCIPAL: ContextVar[Principal] = ContextVar("ops_principal")
ANONYMOUS = Principal("member", "anonymous", member="")  # on the public paths only; its member matches no record


def principal() -> Principal:
    return _PRINCIPAL.get()


def _keep_dims() -> Callable[[Sequence[str]], bool] | None:
    """The meter-count filter of the principal asking; None (everything) for the operator."""
    who = principal()
    return None if who.operator else who.keep_dims


def _keep_service() -> Callable[[str], bool] | None:
    who = principal()
    return None if who.operator else who.keep_service


def public_paths(spec: Path = SPEC) -> re.Pattern[str]:
    """The paths served without a token: the spec's operations marked `security: []`, and connexion's own copy of
    the spec and its Swagger UI (the API's description, no data)."""
    doc = yaml.safe_load(spec.read_text())
    default = doc.get("security")
    public = [
        re.sub(r"\\\{[^/]*?\\\}", "[^/]+", re.escape(path))
        for path, item in doc["paths"].items()
        if all(op.get("security", default) == [] for op in item.values() if isinstance(op, dict))
    ]
    public += [re.escape("/openapi.json"), re.escape("/openapi.yaml"), "/ui(?:/.*)?"]
    # no dot segment anywhere: a public prefix never leads back up to a protected path
    return re.compile(f"(?!.*/\\.\\.?(?:/|$)){re.escape(BASE)}(?:{'|'.join(public)})")


PUBLIC_PATHS = public_paths()


class OpsHandlers:
    """The operations, bound to one gateway's config (no module-level state: several gateways may share a process)."""

    def __init__(self, cfg: ChainConfig, snapshot_getter: Callable[[], Snapshot | None],
                 local: Local | None = None) -> None:  # fmt: skip
        self.cfg = cfg
        self.snapshot_getter = snapshot_getter
        self._redis: redis.Redis | None = None
        self.local = local  # this worker's own view (gateway/ops_components.py), None when built alone in tests
        self.heartbeat = Heartbeat(cfg.gateway, lambda: self.redis, snapshot_getter,
                                   local.heartbeat if local is not None else None)  # fmt: skip
        self.alert_rules = alerts.load_rules()
        self.days = DayCache()
        self.audit_index = AuditIndex(cfg.data_dir / "audit")
        self.calls_api = CallsApi(cfg)  # the central transaction log (gateway/ops_calls.py)

    @property
    def redis(self) -> redis.Redis:
        if self._redis is None:
            self._redis = sync_single_client(self.cfg.redis_url, who="the gateway's operations API")
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
        result = await self._query(transactions, start, end, groups, MESH_ROLES if roles == "mesh" else None,
                                   _keep_dims())  # fmt: skip
        return _json({"from": _iso(start), "to": _iso(end), "group_by": groups, "roles": roles, **result})

    async def latency(self, from_: str, to: str, service: str | None = None) -> ConnexionResponse:
        start, end = parse_time(from_, "from"), parse_time(to, "to")
        return _json(await self._query(latency, start, end, service or None, MESH_ROLES, _keep_service()))

    async def audit(self, from_: str, to: str, limit: int = 1000, page_token: str | None = None,
                    xroad_id: str | None = None) -> ConnexionResponse:  # fmt: skip
        start, end = parse_time(from_, "from"), parse_time(to, "to")
        if end <= start:
            raise bad_request("to", "to must be after from")
        if not 1 <= limit <= MAX_PAGE:
            raise bad_request("limit", f"limit must be 1..{MAX_PAGE}")
        after = _decode_token(page_token) if page_token else None
        lo, hi = int(start.timestamp() * 1000), int(end.timestamp() * 1000)
        who = principal()
        keep: Callable[[dict[str, Any]], bool] | None = None if who.operator else who.keep_record
        if xroad_id is not None:  # one call's records (a call in /calls opens its audit record)
            keep = of_call(xroad_id, keep)
        page = await asyncio.to_thread(self.audit_index.page, lo, hi, after, limit, keep)
        token = _encode_token(sort_key(page[-1])) if len(page) == limit else None
        return _json({"records": [rec for _, rec in page], "next_page_token": token})

    async def calls(self, **params: Any) -> ConnexionResponse:
        return await self.calls_api.calls(principal(), params)

    async def calls_latency(self, **params: Any) -> ConnexionResponse:
        return await self.calls_api.latency(principal(), params)

    async def timeseries(self, window: str = "hour", group_by: str = "service") -> ConnexionResponse:
        if group_by not in SERIES_GROUPS:
            raise bad_request("group_by", f"group_by must be one of {', '.join(SERIES_GROUPS)}")
        return _json(await self._query(timeseries, parse_window(window), group_by, _now(), self.days, _keep_dims()))

    async def top_consumers(self, window: str = "hour", limit: int = 10) -> ConnexionResponse:
        if not 1 <= limit <= 100:
            raise bad_request("limit", "limit must be 1..100")
        return _json(await self._query(top_consumers, parse_window(window), limit, _now(), self.days, _keep_dims()))

    async def errors(self, window: str = "hour") -> ConnexionResponse:
        return _json(await self._query(error_rates, parse_window(window), _now(), self.days, _keep_dims()))

    async def service_latency(self, window: str = "hour") -> ConnexionResponse:
        return _json(await self._query(service_latency, parse_window(window), _now(), _keep_service()))

    async def gateways(self) -> ConnexionResponse:
        snap = self.snapshot_getter()
        known = sorted(snap.gateways) if snap is not None else [self.cfg.gateway]
        health = await self._query(gateway_health, known)
        keep = _keep_service()
        if keep is not None:  # a member learns only of its own quarantined services, nothing of other entries
            for item in health["gateways"]:
                entries = item.get("quarantined")
                mine = [q for q in entries if _own_service(q, keep)] if isinstance(entries, list) else []
                item["quarantined"], item["quarantined_count"] = mine, len(mine)
        return _json(health)

    def _known(self) -> list[str]:
        snap = self.snapshot_getter()
        return sorted(snap.gateways) if snap is not None else [self.cfg.gateway]

    def _store(self) -> Any:
        return self.calls_api.store  # the transaction log's store, for its health

    async def components(self) -> ConnexionResponse:
        return _json(await components(self.redis, self._known(), self.local, self._store(), _keep_service()))

    async def alerts(self) -> ConnexionResponse:
        return _json(await alerts.current(self.alert_rules, self.redis, self._known(), self.local, self._store(),
                                          _keep_dims(), _keep_service()))  # fmt: skip

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


def _own_service(entry: object, keep: Callable[[str], bool]) -> bool:
    return isinstance(entry, dict) and entry.get("kind") == "service" and keep(str(entry.get("id")))


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
               "Content-Security-Policy": DASHBOARD_CSP, "Referrer-Policy": "no-referrer"}  # fmt: skip
    return ConnexionResponse(status_code=200, content_type=kind, mimetype=kind.split(";")[0], body=path.read_bytes(),
                             headers=headers)  # fmt: skip


def _json(body: dict[str, Any]) -> ConnexionResponse:
    return ConnexionResponse(status_code=200, content_type="application/json", mimetype="application/json",
                             body=orjson.dumps(body), headers={"Cache-Control": "no-store"})  # fmt: skip


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


async def send_problem(send: Send, problem: Problem, instance: str | None = None) -> None:
    body = problem.to_bytes(instance)
    headers = [(b"content-type", PROBLEM_MEDIA_TYPE.encode()), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in problem.headers.items()]
    await send({"type": "http.response.start", "status": problem.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class _Guard:
    """In front of connexion: the Host check, the token check (except on public paths) and the principal; it also
    gives connexion the full /ops/v1/... path even when the caller stripped it into root_path, and starts the
    heartbeat on the first request if the app was built before the event loop ran (the gateway passes no lifespan
    events)."""

    def __init__(self, app: ASGIApp, heartbeat: Heartbeat, gate: OpsGate) -> None:
        self.app = app
        self.heartbeat = heartbeat
        self.gate = gate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
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
        headers = scope.get("headers", [])
        try:
            self.gate.check_host(headers)
            if PUBLIC_PATHS.fullmatch(scope["path"]):
                who = ANONYMOUS
            else:
                who = self.gate.principal(headers)
        except Problem as problem:
            await send_problem(send, problem, scope["path"][:200])
            return
        token = _PRINCIPAL.set(who)
        try:
            await self.app(scope, receive, send)
        finally:
            _PRINCIPAL.reset(token)


def build_ops_app(cfg: ChainConfig, snapshot_getter: Callable[[], Snapshot | None], gate: OpsGate,
                  local: Local | None = None) -> ASGIApp:  # fmt: skip
    """The ASGI app for /ops/v1 of one gateway; `gate` checks every request's Host and token; `local` is what this
    worker knows of itself (connectors, certificate, spools), for the heartbeat, /components and /metrics."""
    handlers = OpsHandlers(cfg, snapshot_getter, local)
    if local is not None:
        metrics.watch_state(lambda: metrics.set_state(local))
    app = connexion.AsyncApp(__name__, validator_map=validator_map(body=False),
                             middlewares=_without_connexion_security())  # fmt: skip
    app.add_api(
        SPEC,
        base_path=BASE,
        resolver=Resolver(function_resolver=lambda operation_id: getattr(handlers, operation_id)),
        pythonic_params=True,
        swagger_ui_options=connexion.options.SwaggerUIOptions(swagger_ui_path="/ui"),
    )
    add_problem_handlers(app, "gateway operations API")
    handlers.heartbeat.start()  # the gateway builds this app on its running loop, so it beats from the start
    return _Guard(app, handlers.heartbeat, gate)


def _without_connexion_security() -> list[Any]:
    """connexion's middlewares but its own security check: the spec declares the bearer scheme for clients and
    Swagger UI, and _Guard enforces it (connexion would need a token-info function per scheme, found by name)."""
    from connexion.middleware.main import ConnexionMiddleware
    from connexion.middleware.security import SecurityMiddleware

    return [m for m in ConnexionMiddleware.default_middlewares if m is not SecurityMiddleware]
