"""Gateway heartbeats in the shared Redis, so any gateway's operations API can tell the health of the whole mesh.

Each gateway worker writes, every HEARTBEAT_INTERVAL, one field of the hash `ops:hb:<gateway>` (field
`<host>:<pid>`, value JSON: code, snapshot version, snapshot age, the snapshot entries it quarantined, pid, time,
and what `extra` adds: the state of each connector hosted here, certificate expiry and spool backlog, from
gateway/ops_components.Local) and refreshes the hash's TTL; the hash
`ops:gateways` remembers every gateway ever seen, so one whose heartbeats stopped still shows, as down. A worker's
field older than HEARTBEAT_TTL counts as dead even while its siblings keep the hash alive.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict
from typing import Any

import orjson
import redis

from lienthong.background import stop_task
from lienthong.snapshot import Snapshot

log = logging.getLogger("lienthong.gateway.heartbeat")

HEARTBEAT_INTERVAL = 2.0
MAX_QUARANTINED = 100  # entries listed per heartbeat; `quarantined_count` always has them all
HEARTBEAT_TTL = 10
KNOWN_KEY = "ops:gateways"
KNOWN_TTL = 30 * 86400


def heartbeat_key(gateway: str) -> str:
    return f"ops:hb:{gateway}"


class Heartbeat:
    """One worker's heartbeat writer; start() is idempotent and needs a running event loop."""

    def __init__(
        self, gateway: str, client: Callable[[], redis.Redis], snapshot_getter: Callable[[], Snapshot | None],
        extra: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self.gateway = gateway
        self.extra = extra
        self.client = client
        self.snapshot_getter = snapshot_getter
        self.worker = f"{socket.gethostname()}:{os.getpid()}"
        self._task: asyncio.Task[None] | None = None
        self._failing = False

    def beat_once(self, now: float | None = None) -> None:
        now = time.time() if now is None else now
        snap = self.snapshot_getter()
        body = {
            "gateway": self.gateway,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "time": now,
            "snapshot_version": snap.version if snap is not None else None,
            "snapshot_age_seconds": round(snap.age(now), 3) if snap is not None else None,
            "quarantined": [asdict(q) for q in snap.quarantined[:MAX_QUARANTINED]] if snap is not None else [],
            "quarantined_count": len(snap.quarantined) if snap is not None else 0,
        }
        if self.extra is not None:
            body.update(self.extra())
        pipe = self.client().pipeline(transaction=False)
        pipe.hset(heartbeat_key(self.gateway), self.worker, orjson.dumps(body))
        pipe.expire(heartbeat_key(self.gateway), HEARTBEAT_TTL)
        pipe.hset(KNOWN_KEY, self.gateway, str(now))
        pipe.expire(KNOWN_KEY, KNOWN_TTL)
        pipe.execute()

    def start(self) -> None:
        if self._task is not None and not self._task.done():
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop yet: the first request starts it
        self._task = loop.create_task(self._run(), name=f"ops-heartbeat-{self.gateway}")

    async def _run(self) -> None:
        while True:
            try:
                await asyncio.to_thread(self.beat_once)
                if self._failing:
                    log.info("heartbeat to Redis works again")
                self._failing = False
            except redis.RedisError as exc:
                if not self._failing:  # one line per outage, not one every two seconds
                    log.warning("cannot write the heartbeat to Redis: %s", exc)
                self._failing = True
            await asyncio.sleep(HEARTBEAT_INTERVAL)

    async def stop(self) -> None:
        await stop_task(self._task)
        self._task = None
        with contextlib.suppress(redis.RedisError):
            await asyncio.to_thread(self.client().hdel, heartbeat_key(self.gateway), self.worker)


def gateway_health(client: redis.Redis, known: Iterable[str], now: float | None = None) -> dict[str, Any]:
    """Every gateway in `known` (e.g. from the snapshot) or ever heard from: up while a worker's heartbeat is fresh,
    with the newest snapshot version any live worker holds and the youngest snapshot age."""
    now = time.time() if now is None else now
    seen = {_text(k): float(v) for k, v in client.hgetall(KNOWN_KEY).items()}
    items = []
    for code, beats in live_beats(client, sorted(set(known) | set(seen)), now).items():
        versions = [b["snapshot_version"] for b in beats if isinstance(b.get("snapshot_version"), int)]
        ages = [float(b["snapshot_age_seconds"]) + (now - float(b["time"])) for b in beats
                if isinstance(b.get("snapshot_age_seconds"), int | float)]  # fmt: skip
        last = max((float(b["time"]) for b in beats), default=seen.get(code))
        quarantined = _quarantined(beats)
        items.append(
            {
                "gateway": code,
                "status": "up" if beats else "down",
                "workers": len(beats),
                "pids": sorted(int(b["pid"]) for b in beats if isinstance(b.get("pid"), int)),
                "snapshot_version": max(versions) if versions else None,
                "snapshot_age_seconds": round(min(ages), 3) if ages else None,
                "last_seen": last,
                "heartbeat_age_seconds": round(now - last, 3) if last is not None else None,
                "quarantined": quarantined,
                "quarantined_count": max((_count(b.get("quarantined_count")) for b in beats), default=0),
            }
        )
    return {"time": now, "heartbeat_ttl_seconds": HEARTBEAT_TTL, "gateways": items}


def live_beats(client: redis.Redis, codes: Iterable[str], now: float) -> dict[str, list[dict[str, Any]]]:
    """Per gateway code, the heartbeats of its workers that are fresh (at most HEARTBEAT_TTL old)."""
    codes = list(codes)
    pipe = client.pipeline(transaction=False)
    for code in codes:
        pipe.hgetall(heartbeat_key(code))
    out: dict[str, list[dict[str, Any]]] = {}
    for code, workers in zip(codes, pipe.execute(), strict=True):
        beats = out[code] = []
        for raw in workers.values():
            try:
                beat = orjson.loads(raw)
            except orjson.JSONDecodeError:
                continue
            if isinstance(beat, dict) and now - float(beat.get("time", 0)) <= HEARTBEAT_TTL:
                beats.append(beat)
    return out


def _quarantined(beats: list[dict[str, Any]]) -> list[dict[str, str]]:
    """The snapshot entries any live worker left out (workers between two versions may differ), each once."""
    found: dict[tuple[str, str], dict[str, str]] = {}
    for beat in beats:
        entries = beat.get("quarantined")
        for q in entries if isinstance(entries, list) else []:
            if isinstance(q, dict) and all(isinstance(q.get(k), str) for k in ("kind", "id", "reason")):
                found.setdefault((q["kind"], q["id"]), {"kind": q["kind"], "id": q["id"], "reason": q["reason"]})
    return [found[key] for key in sorted(found)]


def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
