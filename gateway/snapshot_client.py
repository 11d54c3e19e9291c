"""Keeps one worker's copy of the registry's signed snapshot fresh (protocol §7): long poll, verify, swap, cache.

The snapshot's age counts from the last time the registry confirmed it (a 200 or a 304). The cache file's mtime
carries that time across restarts, so a gateway started from its cache with the registry down knows how old its
configuration really is and stops serving once it is older than the configured maximum.

Nothing a snapshot holds may stop the poll (issue 13): verifying and building a version (route compiling included)
runs in a worker thread, so the event loop keeps answering calls meanwhile; an entry that cannot be built is
quarantined by lienthong.snapshot and logged here once per version; and any error the loop did not expect is logged
with its traceback and retried with a jittered backoff, never left to end the task.

After the first snapshot the registry answers deltas (protocol §7.2), applied to the snapshot held, off the loop too.
A delta that does not follow the version held, or cannot be applied, is dropped and a full snapshot asked for at
once; the on-disk cache (gateway/snapshot_cache.py) keeps the last full envelope and the deltas since.

Several registries may serve the same Redis (issue 17): given several URLs, the poll keeps to the one that answers
and moves to the next when it is unreachable, times out or answers 5xx; a refused or bad snapshot does not move it.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import orjson

from gateway import metrics
from gateway.settings import parse_registry_urls
from gateway.snapshot_cache import SnapshotCache
from lienthong import pki, tokens
from lienthong.background import stop_task
from lienthong.keys import PrivateKey, PublicKey, public_key_from_jwk
from lienthong.snapshot import Snapshot, SnapshotError, gc_paused
from lienthong.snapshot_wire import Opened, open_envelope

log = logging.getLogger("lienthong.gateway.snapshot")

MAX_BACKOFF = 5.0  # a registry back from an outage is seen within seconds
MAX_FAULT_BACKOFF = 30.0  # an error nobody expected is retried too, but not hammered
FIRST_BACKOFF = 0.5
LOGGED_QUARANTINES = 20  # per version: a snapshot full of garbage gives a summary, not thousands of lines
# what a registry outage or a refused snapshot raises; anything else is a fault, logged with its traceback
EXPECTED_ERRORS = (httpx.HTTPError, SnapshotError, ValueError, KeyError)


class RegistryUnavailable(SnapshotError):
    """The registry answered 5xx: another registry on the same Redis may serve."""


def load_registry_key(path: Path) -> PublicKey:
    """The registry's public key, a JWK file given at install time."""
    try:
        return public_key_from_jwk(orjson.loads(path.read_bytes()))
    except (OSError, orjson.JSONDecodeError, ValueError) as exc:
        raise ValueError(f"{path}: not a registry public JWK ({exc})") from exc


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
        ca: Path | None = None,
    ) -> None:
        self.code = code
        self.registry_urls = parse_registry_urls(registry_url)  # one URL or a comma list of registries
        if not self.registry_urls:
            raise ValueError("no registry URL given")
        self._at = 0  # which of registry_urls the poll uses: it stays on one that answers
        self.registry_key = registry_key
        self.key = key
        self.kid = kid
        self.cache_path = cache_path
        self.cache = SnapshotCache(cache_path)
        self._want_full = False  # the next fetch asks for a full snapshot (a delta failed, or the cache grew long)
        self.max_age = max_age
        self.wait = wait
        self.ca = ca  # the mesh CA an https registry is verified with (its serving certificate is the mesh's)
        self.current: Snapshot | None = None
        self.confirmed_at: float = 0.0
        self._task: asyncio.Task[None] | None = None
        self._http: httpx.AsyncClient | None = None
        self._installing = asyncio.Lock()  # one build at a time: each builds on the one before

    @property
    def registry_url(self) -> str:
        return self.registry_urls[self._at]

    def _move_on(self, exc: Exception) -> None:
        """After an outage of the registry in use, use the next one (logged: operators see which serves whom)."""
        if len(self.registry_urls) < 2 or not isinstance(exc, httpx.TransportError | RegistryUnavailable):
            return
        failed = self.registry_url
        self._at = (self._at + 1) % len(self.registry_urls)
        log.warning("gateway %s: registry %s failed (%s); the snapshot poll now uses %s",
                    self.code, failed, exc.__class__.__name__, self.registry_url)  # fmt: skip

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

    def _accept(self, doc: dict[str, object]) -> bool:
        """True for a newer version meant for us, False for the one we hold (a confirmation); raise for the rest."""
        if doc.get("gateway") not in (None, self.code):
            raise SnapshotError(f"snapshot is for gateway {doc.get('gateway')!r}, not {self.code!r}")
        version = int(doc["version"])  # type: ignore[call-overload]
        if self.current is not None and version < self.current.version:
            raise SnapshotError(f"snapshot version {version} is lower than the held {self.current.version}")
        return self.current is None or version > self.current.version

    def _build(self, raw: bytes, confirmed_at: float) -> tuple[Opened, Snapshot | None]:
        """Verify a fetched envelope and build the snapshot it brings, in a worker thread; None when it is the
        version we hold. A delta is applied to the snapshot held (SnapshotError when it does not follow it)."""
        with gc_paused():
            opened = open_envelope(raw, self.registry_key, self.code)
            if opened.kind == "delta":
                if self.current is None:
                    raise SnapshotError("a delta came, but this gateway holds no snapshot to apply it to")
                return opened, self.current.apply(opened.doc, received_at=confirmed_at)
            if not self._accept(opened.doc):
                return opened, None
            return opened, Snapshot(opened.doc, received_at=confirmed_at, previous=self.current)

    def _confirm(self, confirmed_at: float) -> None:
        self.confirmed_at = confirmed_at
        metrics.SNAPSHOT_CONFIRMED.set(confirmed_at)

    def _swap(self, snapshot: Snapshot) -> None:
        previous, self.current = self.current, snapshot
        self._confirm(snapshot.received_at)
        metrics.snapshot_installed(snapshot)
        self._log_quarantine(snapshot, previous)

    def _log_quarantine(self, snapshot: Snapshot, previous: Snapshot | None) -> None:
        """Once per version: each entry newly left out, with its reason, then how many are out in all."""
        if not snapshot.quarantined:
            return
        known = set(previous.quarantined) if previous is not None else set()
        new = [q for q in snapshot.quarantined if q not in known]
        for q in new[:LOGGED_QUARANTINES]:
            log.warning("gateway %s: snapshot version %s: %s %s quarantined: %s",
                        self.code, snapshot.version, q.kind, q.id, q.reason)  # fmt: skip
        services = sorted(snapshot.quarantined_services)
        log.warning(
            "gateway %s: snapshot version %s installed with %d entries quarantined (%d new), services: %s",
            self.code, snapshot.version, len(snapshot.quarantined), len(new), ", ".join(services[:20]) or "none",
        )  # fmt: skip

    def load_cache(self) -> bool:
        """Start from the on-disk cache: its full snapshot, then its deltas in order, as far as they verify."""
        cached = self.cache.read()
        if cached is None:
            return False
        envelopes, confirmed = cached
        with gc_paused():
            return self._replay(envelopes, confirmed)

    def _replay(self, envelopes: list[bytes], confirmed: float) -> bool:
        try:
            opened = open_envelope(envelopes[0], self.registry_key, self.code) if envelopes else None
            if opened is None or opened.kind != "full":
                raise SnapshotError("the cache does not start with a full snapshot")
            snapshot = Snapshot(opened.doc, received_at=confirmed)
        except EXPECTED_ERRORS as exc:
            log.warning("ignoring snapshot cache %s: %s", self.cache_path, exc)
            return False
        except Exception:
            log.exception("ignoring snapshot cache %s: it could not be installed", self.cache_path)
            return False
        for line in envelopes[1:]:
            try:
                snapshot = snapshot.apply(open_envelope(line, self.registry_key, self.code).doc, received_at=confirmed)
            except Exception as exc:  # a torn last append, say: the poll brings the rest again
                log.warning(
                    "snapshot cache %s: replay stopped at version %s: %s", self.cache_path, snapshot.version, exc
                )
                self._want_full = True  # the file holds deltas past what was installed: rewrite it from a full one
                break
        if self.current is not None and snapshot.version <= self.current.version:
            return False
        self._swap(snapshot)
        return True

    # -- fetching ----------------------------------------------------------------------------------------------

    def _token(self) -> str:
        who = f"gateway:{self.code}"
        return tokens.sign(self.key, self.kid, {"iss": who, "sub": who, "aud": "registry"}, lifetime=120)

    def _verify(self) -> ssl.SSLContext | bool:
        """The mesh CA for an https registry (host names unchecked: the certificate names the registry by URI SAN, as
        every mesh certificate does); the system's CAs when this gateway holds no mesh CA file."""
        https = any(url.lower().startswith("https:") for url in self.registry_urls)
        if self.ca is not None and https and self.ca.is_file():
            return pki.client_context(self.ca)
        return True

    async def fetch(self, wait: int = 0, timeout: float = 5.0) -> bool:
        """One GET of the snapshot; True when a newer version was installed. Raises on transport or check errors.
        A delta that cannot be applied is followed at once by a request for a full snapshot."""
        full = self._want_full or self.cache.wants_full
        try:
            return await self._fetch(wait, timeout, full)
        except SnapshotError as exc:
            if full or isinstance(exc, RegistryUnavailable):
                raise
            log.warning("gateway %s: a snapshot delta was refused (%s); asking for a full snapshot", self.code, exc)
            self._want_full = True
            return await self._fetch(0, timeout, True)

    async def _fetch(self, wait: int, timeout: float, full: bool) -> bool:
        if self._http is None:
            self._http = httpx.AsyncClient(verify=self._verify())
        headers = {"Authorization": f"Bearer {self._token()}", "Accept": "application/json"}
        if self.current is not None:
            headers["If-None-Match"] = f'"{self.current.version}"'
        params = {"wait": str(wait)} if wait else {}
        if full:
            params["full"] = "true"
        response = await self._http.get(
            f"{self.registry_url}/v1/snapshot", headers=headers, params=params, timeout=timeout + wait
        )
        now = time.time()
        if response.status_code == 304 and self.current is not None:
            self._confirm(now)
            self.cache.confirm(now)
            return False
        if response.status_code >= 500:
            raise RegistryUnavailable(f"registry {self.registry_url} answered {response.status_code}")
        if response.status_code != 200:
            raise SnapshotError(f"registry answered {response.status_code}: {response.text[:200]}")
        async with self._installing:
            opened, built = await asyncio.to_thread(self._build, response.content, now)  # off the loop
            if built is None or (self.current is not None and built.version <= self.current.version):
                self._confirm(now)
                self.cache.confirm(now)
                return False
            self._swap(built)
        write = self.cache.replace if opened.kind == "full" else self.cache.append
        await asyncio.to_thread(write, response.content)
        if opened.kind == "full":
            self._want_full = False
        log.debug("gateway %s: snapshot version %s installed (%s)", self.code, built.version, opened.kind)
        return True

    async def _poll_forever(self) -> None:
        backoff = FIRST_BACKOFF
        recovering = False
        while True:
            try:
                # after an outage ask without waiting: a long poll would hold the 304 that confirms us
                await self.fetch(wait=0 if recovering else self.wait)
                backoff = FIRST_BACKOFF
                recovering = False
                continue
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # nothing may end the poll: it is what brings the next version
                cap = self._report(exc, f"snapshot fetch from {self.registry_url} failed", backoff)
                self._move_on(exc)
            recovering = True
            await asyncio.sleep(random.uniform(backoff / 2, backoff))  # jittered: workers and gateways spread out
            backoff = min(backoff * 2, cap)

    def _report(self, exc: Exception, what: str, retry: float | None) -> float:
        """Log one failure (a fault with its traceback); returns the backoff cap it calls for."""
        then = f"retrying in at most {retry:.1f}s" if retry is not None else "serving from cache"
        if isinstance(exc, EXPECTED_ERRORS):
            log.warning("gateway %s: %s (%s); %s", self.code, what, exc, then)
            return MAX_BACKOFF
        log.error("gateway %s: %s unexpectedly; %s", self.code, what, then, exc_info=exc)
        return MAX_FAULT_BACKOFF

    def _poll_ended(self, task: asyncio.Task[None]) -> None:
        """The poll ends only when stopped; should anything else end it, say so loudly rather than go quiet."""
        if not task.cancelled():
            log.critical("gateway %s: the snapshot poll ended: %r", self.code, task.exception())

    async def start(self) -> None:
        """Cache first, one quick fetch so a fresh start serves current data, then the long poll in the background."""
        await asyncio.to_thread(self.load_cache)
        for _ in self.registry_urls:  # each registry once, until one answers
            try:
                await self.fetch(wait=0, timeout=3.0)
                break
            except Exception as exc:  # a start must never fail on what the registry sent: the poll tries again
                self._report(exc, f"the first snapshot fetch from {self.registry_url} failed", None)
                moved = self._at
                self._move_on(exc)
                if self._at == moved:
                    break
        log.info("gateway %s: snapshot poll uses registry %s", self.code, self.registry_url)
        self._task = asyncio.create_task(self._poll_forever(), name=f"snapshot-poll-{self.code}")
        self._task.add_done_callback(self._poll_ended)

    async def stop(self) -> None:
        await stop_task(self._task)
        if self._http is not None:
            await self._http.aclose()
