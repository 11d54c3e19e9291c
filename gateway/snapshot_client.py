"""Keeps one worker's copy of the registry's signed snapshot fresh (protocol §7): long poll, verify, swap, cache.

The snapshot's age counts from the last time the registry confirmed it (a 200 or a 304). The cache file's mtime
carries that time across restarts, so a gateway started from its cache with the registry down knows how old its
configuration really is and stops serving once it is older than the configured maximum.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import orjson

from lienthong import tokens
from lienthong.background import stop_task
from lienthong.keys import PrivateKey, PublicKey, public_key_from_jwk
from lienthong.snapshot import Snapshot, SnapshotError, verify_jws

log = logging.getLogger("lienthong.gateway.snapshot")

MAX_BACKOFF = 5.0  # a registry back from an outage is seen within seconds


def load_registry_key(path: Path) -> PublicKey:
    """The registry's public key, a JWK file given at install time."""
    try:
        return public_key_from_jwk(orjson.loads(path.read_bytes()))
    except (OSError, orjson.JSONDecodeError, ValueError) as exc:
        raise ValueError(f"{path}: not a registry public JWK ({exc})") from exc


def write_atomically(path: Path, data: bytes) -> None:
    """temp file + fsync + rename, so a crash never leaves a half-written cache."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


@dataclass(frozen=True, slots=True)
class Staleness:
    """Why a gateway may not serve: no snapshot at all, or one older than the maximum age."""

    stale: bool
    detail: str


class SnapshotClient:
    """One per worker process; `current` is replaced by a single reference assignment, never mutated."""

    def __init__(
        self,
        *,
        code: str,
        registry_url: str,
        registry_key: PublicKey,
        key: PrivateKey,
        kid: str,
        cache_path: Path,
        max_age: float,
        wait: int = 30,
    ) -> None:
        self.code = code
        self.registry_url = registry_url.rstrip("/")
        self.registry_key = registry_key
        self.key = key
        self.kid = kid
        self.cache_path = cache_path
        self.max_age = max_age
        self.wait = wait
        self.current: Snapshot | None = None
        self.confirmed_at: float = 0.0
        self._task: asyncio.Task[None] | None = None
        self._http: httpx.AsyncClient | None = None

    # -- state -------------------------------------------------------------------------------------------------

    def staleness(self, now: float | None = None) -> Staleness:
        if self.current is None:
            return Staleness(True, "this gateway has no configuration snapshot yet (registry unreachable, no cache)")
        age = (now if now is not None else time.time()) - self.confirmed_at
        if age > self.max_age:
            since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.confirmed_at))
            return Staleness(
                True,
                f"configuration snapshot version {self.current.version} was last confirmed by the registry at "
                f"{since} ({int(age)} s ago), older than the maximum age of {int(self.max_age)} s",
            )
        return Staleness(False, "")

    def _install(self, doc: dict[str, object], confirmed_at: float) -> bool:
        """Swap in a verified document; refuse one older than what we hold or meant for another gateway."""
        if doc.get("gateway") not in (None, self.code):
            raise SnapshotError(f"snapshot is for gateway {doc.get('gateway')!r}, not {self.code!r}")
        version = int(doc["version"])  # type: ignore[call-overload]
        if self.current is not None and version < self.current.version:
            raise SnapshotError(f"snapshot version {version} is lower than the held {self.current.version}")
        if self.current is not None and version == self.current.version:
            self.confirmed_at = confirmed_at
            return False
        self.current = Snapshot(doc, received_at=confirmed_at)
        self.confirmed_at = confirmed_at
        return True

    def load_cache(self) -> bool:
        """Start from the on-disk cache; its mtime is when the registry last confirmed it."""
        try:
            raw = self.cache_path.read_bytes()
            confirmed = self.cache_path.stat().st_mtime
        except OSError:
            return False
        try:
            self._install(verify_jws(raw, self.registry_key), confirmed)
        except (SnapshotError, ValueError, KeyError) as exc:
            log.warning("ignoring snapshot cache %s: %s", self.cache_path, exc)
            return False
        return True

    # -- fetching ----------------------------------------------------------------------------------------------

    def _token(self) -> str:
        who = f"gateway:{self.code}"
        return tokens.sign(self.key, self.kid, {"iss": who, "sub": who, "aud": "registry"}, lifetime=120)

    async def fetch(self, wait: int = 0, timeout: float = 5.0) -> bool:
        """One GET of the snapshot; True when a newer version was installed. Raises on transport or check errors."""
        if self._http is None:
            self._http = httpx.AsyncClient()
        headers = {"Authorization": f"Bearer {self._token()}", "Accept": "application/jose"}
        if self.current is not None:
            headers["If-None-Match"] = f'"{self.current.version}"'
        params = {"wait": str(wait)} if wait else None
        response = await self._http.get(
            f"{self.registry_url}/v1/snapshot", headers=headers, params=params, timeout=timeout + wait
        )
        now = time.time()
        if response.status_code == 304 and self.current is not None:
            self.confirmed_at = now
            with contextlib.suppress(OSError):
                os.utime(self.cache_path, (now, now))
            return False
        if response.status_code != 200:
            raise SnapshotError(f"registry answered {response.status_code}: {response.text[:200]}")
        doc = verify_jws(response.content, self.registry_key)
        changed = self._install(doc, now)
        if changed:
            write_atomically(self.cache_path, response.content)
            log.info("gateway %s: snapshot version %s installed", self.code, doc["version"])
        else:
            with contextlib.suppress(OSError):
                os.utime(self.cache_path, (now, now))
        return changed

    async def _poll_forever(self) -> None:
        backoff = 0.5
        recovering = False
        while True:
            try:
                # after an outage ask without waiting: a long poll would hold the 304 that confirms us
                await self.fetch(wait=0 if recovering else self.wait)
                backoff = 0.5
                recovering = False
            except asyncio.CancelledError:
                raise
            except (httpx.HTTPError, SnapshotError, ValueError, KeyError) as exc:
                log.warning("gateway %s: snapshot fetch failed (%s); retrying in %.1fs", self.code, exc, backoff)
                recovering = True
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)

    async def start(self) -> None:
        """Cache first, one quick fetch so a fresh start serves current data, then the long poll in the background."""
        self.load_cache()
        try:
            await self.fetch(wait=0, timeout=3.0)
        except (httpx.HTTPError, SnapshotError, ValueError, KeyError) as exc:
            log.warning("gateway %s: registry not reachable at start (%s); serving from cache", self.code, exc)
        self._task = asyncio.create_task(self._poll_forever(), name=f"snapshot-poll-{self.code}")

    async def stop(self) -> None:
        await stop_task(self._task)
        if self._http is not None:
            await self._http.aclose()
