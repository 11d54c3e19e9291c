"""Health of every component of the mesh (GET /ops/v1/components): gateways, each connector as its hosting gateway
sees it, the registry, Redis and the transaction-log store.

A gateway knows its connectors only by calling them: each worker's circuit breakers (gateway/breaker.py) keep the
last success and failure and the recent failures and timeouts, and the heartbeat (gateway/ops_heartbeat.py) carries
them with the snapshot's list of connectors hosted here, so any gateway can tell that a connector is down while its
gateway is up. The live workers of a gateway are merged: the latest evidence wins (a failure after the last success
is down). The registry is asked for its /healthz, Redis pinged, and the store asked for health(), each bounded by
PROBE_TIMEOUT so one dead component cannot stall the page.

`Local` is what one worker knows of itself (breakers, certificate, spools, snapshot); the heartbeat and /metrics
(gateway/metrics.py) read it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx
import redis

from gateway.breaker import upstream_status
from gateway.ops_heartbeat import gateway_health, live_beats
from lienthong import pki
from lienthong.snapshot import Snapshot

PROBE_TIMEOUT = 2.0


class _App(Protocol):  # what Local.of reads of gateway.app.GatewayApp (no import: that module imports this one's users)
    settings: Any
    breakers: Any
    chain: Any
    snapshots: Any


@dataclass
class Local:
    """One worker's own view: its breakers' reports by upstream URL, its certificate, its spools, its snapshot."""

    gateway: str
    snapshot_getter: Callable[[], Snapshot | None]
    upstreams: Callable[[], dict[str, dict[str, Any]]] = dict
    cert_file: Path | None = None
    spools: Callable[[], dict[str, int]] = dict
    registry_urls: tuple[str, ...] = ()
    ca: Path | None = None
    confirmed_at: Callable[[], float] = lambda: 0.0
    _cert: tuple[float, float | None] = field(default=(-1.0, None), repr=False)  # (mtime, not-after) of cert_file

    @classmethod
    def of(cls, app: _App) -> Local:
        settings = app.settings
        files = settings.cert_files
        return cls(
            gateway=settings.code, snapshot_getter=lambda: app.snapshots.current, upstreams=app.breakers.report,
            cert_file=None if settings.insecure_http else files.cert, spools=lambda: spool_backlog(app.chain.policies),
            registry_urls=tuple(settings.registry_urls), ca=None if settings.insecure_http else files.ca,
            confirmed_at=lambda: app.snapshots.confirmed_at,
        )  # fmt: skip

    def certificate_expires_at(self) -> float | None:
        """notAfter of this gateway's TLS certificate (epoch seconds), read again when the file changes (renewal)."""
        if self.cert_file is None:
            return None
        try:
            mtime = self.cert_file.stat().st_mtime
            if mtime != self._cert[0]:
                self._cert = (mtime, pki.load_cert(self.cert_file).not_valid_after_utc.timestamp())
        except (OSError, ValueError):
            return None
        return self._cert[1]

    def connectors(self) -> list[dict[str, Any]]:
        """The connectors hosted here (the snapshot's upstreams) with this worker's breaker report on each."""
        snap = self.snapshot_getter()
        reports = self.upstreams()
        items = []
        for service, base in sorted(snap.upstreams.items()) if snap is not None else []:
            report = reports.get(base) or {"status": "unknown", "state": "closed"}
            items.append({"service": service, "upstream": base, **report})
        return items

    def heartbeat(self) -> dict[str, Any]:
        """What the heartbeat adds to its body."""
        return {"connectors": self.connectors(), "certificate_expires_at": self.certificate_expires_at(),
                "spool_backlog_bytes": self.spools()}  # fmt: skip


# bytes written and not yet shipped, read from each spooling policy's own counters (policies/meter.py: applied to
# Redis; policies/txlog_ship.py: stored); a policy that offers backlog_bytes() is asked that instead
_BACKLOG: dict[str, Callable[[Any], int]] = {
    "meter": lambda p: int(p._written) - int(p._applied),
    "txlog": lambda p: int(p.spool.written) - int(p.shipper.shipped),
}


def spool_backlog(policies: Iterable[Any]) -> dict[str, int]:
    """Bytes in each policy's local spool not yet shipped (meter, transaction log), this worker's current file."""
    out: dict[str, int] = {}
    for policy in policies:
        own = getattr(policy, "backlog_bytes", None)
        reader = _BACKLOG.get(policy.name)
        try:
            if callable(own):
                out[policy.name] = max(0, int(own()))
            elif reader is not None:
                out[policy.name] = max(0, reader(policy))
        except (AttributeError, TypeError, ValueError):  # a policy whose counters moved: no gauge rather than a lie
            continue
    return out


# -- merging the heartbeats of one gateway's workers --------------------------------------------------------------


def merge_connectors(gateway: str, beats: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per connector of a gateway from its live workers' heartbeats: latest success and failure, sums of
    the recent failures and timeouts, the worst breaker state."""
    merged: dict[str, dict[str, Any]] = {}
    states = {"open": 0, "half-open": 1, "closed": 2}
    for beat in beats:
        for c in beat.get("connectors") or []:
            if not isinstance(c, dict) or not isinstance(c.get("service"), str):
                continue
            m = merged.setdefault(c["service"], {"service": c["service"], "gateway": gateway, "kind": "connector",
                                                 "upstream": c.get("upstream"), "state": "closed",
                                                 "last_success": None, "last_failure": None,
                                                 "last_failure_kind": None, "recent_failures": 0,
                                                 "recent_timeouts": 0})  # fmt: skip
            if states.get(str(c.get("state")), 2) < states[m["state"]]:
                m["state"] = c.get("state")
            if _num(c.get("last_failure")) > _num(m["last_failure"]):
                m["last_failure"], m["last_failure_kind"] = c.get("last_failure"), c.get("last_failure_kind")
            if _num(c.get("last_success")) > _num(m["last_success"]):
                m["last_success"] = c.get("last_success")
            m["recent_failures"] += int(_num(c.get("recent_failures")))
            m["recent_timeouts"] += int(_num(c.get("recent_timeouts")))
    for m in merged.values():
        m["status"] = upstream_status(m["state"], m["last_success"], m["last_failure"])
    return [merged[k] for k in sorted(merged)]


def _num(value: object) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


def mesh_components(client: redis.Redis, gateways: dict[str, Any], keep_service: Callable[[str], bool] | None,
                    now: float | None = None) -> dict[str, Any]:  # fmt: skip
    """Gateways (from gateway_health's answer) and their connectors, from the heartbeats in Redis."""
    now = time.time() if now is None else now
    beats = live_beats(client, [g["gateway"] for g in gateways["gateways"]], now)
    items: list[dict[str, Any]] = []
    for g in gateways["gateways"]:
        mine = beats.get(g["gateway"], [])
        expires = [_num(b.get("certificate_expires_at")) for b in mine if b.get("certificate_expires_at")]
        backlog: dict[str, int] = {}
        for b in mine:
            for name, n in (b.get("spool_backlog_bytes") or {}).items():
                backlog[name] = backlog.get(name, 0) + int(_num(n))
        items.append({"kind": "gateway", "name": g["gateway"], "status": g["status"], "gateway": g["gateway"],
                      "detail": f"{g['workers']} worker(s), snapshot v{g['snapshot_version']}" if mine else
                      "no heartbeat", "snapshot_age_seconds": g["snapshot_age_seconds"],
                      "certificate_expires_in_seconds": round(min(expires) - now, 1) if expires else None,
                      "spool_backlog_bytes": backlog})  # fmt: skip
        if g["status"] != "up":
            continue
        for c in merge_connectors(g["gateway"], mine):
            if keep_service is None or keep_service(c["service"]):
                items.append({**c, "name": c["service"], "detail": _connector_detail(c, now)})
    return {"items": items}


def _connector_detail(c: dict[str, Any], now: float) -> str:
    if c["status"] == "unknown":
        return "not called since its gateway started"
    parts = [f"circuit {c['state']}"]
    if c["last_failure"]:
        parts.append(f"last {c['last_failure_kind'] or 'failure'} {now - c['last_failure']:.0f} s ago")
    if c["last_success"]:
        parts.append(f"last answer {now - c['last_success']:.0f} s ago")
    parts.append(f"{c['recent_failures']} failures, {c['recent_timeouts']} timeouts in 5 min")
    return "; ".join(parts)


# -- the shared services ------------------------------------------------------------------------------------------


def redis_health(client: redis.Redis) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        client.ping()
    except redis.RedisError as exc:
        return _component("redis", "redis", "down", f"{type(exc).__name__}: {str(exc)[:120]}")
    return _component("redis", "redis", "up", f"ping {1000 * (time.perf_counter() - started):.1f} ms")


async def registry_health(urls: Iterable[str], ca: Path | None) -> list[dict[str, Any]]:
    """Each registry's /healthz (the mesh CA checks an https one, as the snapshot poll does)."""
    verify: Any = pki.client_context(ca) if ca is not None and ca.is_file() else True
    out = []
    async with httpx.AsyncClient(verify=verify, timeout=PROBE_TIMEOUT) as http:
        for url in urls:
            try:
                r = await http.get(f"{url.rstrip('/')}/healthz")
                status = "up" if r.status_code == 200 else "down"
                detail = f"/healthz {r.status_code}"
            except httpx.HTTPError as exc:
                status, detail = "down", f"{type(exc).__name__}: {str(exc)[:120]}"
            out.append(_component("registry", url, status, detail))
    return out


def txlog_health(store: Any) -> dict[str, Any]:
    """The transaction-log store's health() (policies/txlog_store.py); unknown without a store."""
    if store is None:
        return _component("txlog-store", "transaction log", "unknown", "no transaction-log store configured")
    try:
        ok, detail = store.health()
    except Exception as exc:  # a store's driver raises its own errors: any of them means "not healthy"
        ok, detail = False, f"{type(exc).__name__}: {str(exc)[:120]}"
    return _component("txlog-store", "transaction log", "up" if ok else "down", str(detail)[:200])


def _component(kind: str, name: str, status: str, detail: str) -> dict[str, Any]:
    return {"kind": kind, "name": name, "status": status, "detail": detail}


def _mesh(client: redis.Redis, known: list[str], keep_service: Callable[[str], bool] | None,
          now: float) -> dict[str, Any]:  # fmt: skip
    try:
        return mesh_components(client, gateway_health(client, known, now), keep_service, now)
    except redis.RedisError:  # Redis's own entry says so; nothing is known of gateways and connectors without it
        return {"items": []}


async def components(client: redis.Redis, known: list[str], local: Local | None, store: Any,
                     keep_service: Callable[[str], bool] | None) -> dict[str, Any]:  # fmt: skip
    """The whole answer: the probes run side by side, each bounded."""
    now = time.time()
    probes = await asyncio.gather(
        asyncio.to_thread(_mesh, client, known, keep_service, now), asyncio.to_thread(redis_health, client),
        registry_health(local.registry_urls if local else (), local.ca if local else None),
        asyncio.wait_for(asyncio.to_thread(txlog_health, store), PROBE_TIMEOUT * 2),
        return_exceptions=True,
    )  # fmt: skip
    items: list[dict[str, Any]] = []
    for probe in probes:
        if isinstance(probe, BaseException):
            items.append(_component("probe", type(probe).__name__, "down", str(probe)[:200]))
        elif isinstance(probe, list):
            items.extend(probe)
        elif "items" in probe:
            items.extend(probe["items"])
        else:
            items.append(probe)
    down = [i for i in items if i["status"] == "down"]
    return {"time": now, "status": "down" if down else "up", "down": len(down), "items": items}
