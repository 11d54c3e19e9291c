"""Assemble and sign snapshots (protocol §7) from the stored JSON strings, without parsing the objects.

What one change costs does not grow with the number of gateways: the common part every gateway shares is signed once
per version (a full snapshot) or once per (from, to) pair (a delta); each gateway's own part, its upstream URLs, is
small and signed for it alone. Each is built by the first request that needs it while the others wait for the same
result, and kept for the next requests.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import orjson
import redis.asyncio as aioredis
from jwt.algorithms import get_default_algorithms

from lienthong.ids import INSTANCE
from lienthong.keys import PrivateKey, algorithm_of
from registry.snapshot_delta import DeltaRead, read_delta
from registry.store import K_PKI_REVOKED, K_SNAP_SERVICES, K_VERSION, SNAPSHOT_KINDS, obj_key, upstreams_key

T = TypeVar("T")
FULL_ATTEMPTS = 5  # the version moved under a full build this many times: build one for this request alone


def _b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def _array(items: list[bytes]) -> bytes:
    return b"[" + b",".join(items) + b"]"


def _decoded(raw: dict[bytes, bytes]) -> dict[str, str | None]:
    return {k.decode(): v.decode() for k, v in raw.items()}


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True, slots=True)
class Envelope:
    """A response body (protocol §7.1) and the version it brings the gateway to."""

    version: int
    kind: str
    body: bytes


class SnapshotBuilder:
    def __init__(
        self, redis: aioredis.Redis, key: PrivateKey, kid: str, cache_size: int = 64,
        upstream_policy: dict[str, Any] | None = None, ca_pems: tuple[str, ...] = (),
    ) -> None:  # fmt: skip
        self.redis = redis
        self._ca = list(ca_pems)  # the mesh CA certificates, for the `pki` section
        # the mesh's upstream allowlist and the registry's own endpoints: gateways check connectors against it
        self._policy = b',"upstream_policy":' + orjson.dumps(upstream_policy or {"allow": [], "mesh": []})
        # what a delta cannot carry: a gateway whose full snapshot had another one needs a full one (§7.2)
        self.config = hashlib.sha256(self._policy + orjson.dumps(self._ca)).hexdigest()[:32]
        self.key = key
        self.algorithm = algorithm_of(key)
        self._signer = get_default_algorithms()[self.algorithm]
        self._protected = _b64(orjson.dumps({"alg": self.algorithm, "kid": kid, "typ": "JOSE"}))
        self._common: tuple[int, bytes] | None = None  # the last full common part: version, JWS
        self._deltas: OrderedDict[int, tuple[DeltaRead, bytes] | None] = OrderedDict()  # since -> read, common JWS
        self._parts: OrderedDict[tuple[str, int, int, str], bytes] = OrderedDict()  # gateways' signed parts
        self._cache_size = cache_size
        self._flights: dict[Any, asyncio.Future[Any]] = {}

    # -- full snapshots ------------------------------------------------------------------------------------------

    async def full(self, gateway: str) -> Envelope:
        """A full snapshot for `gateway` at the current version."""
        for _ in range(FULL_ATTEMPTS):
            version, upstreams = await self._version_and_upstreams(gateway)
            common = self._common
            if common is None or common[0] < version:
                common = await self._once(("full",), self._build_common)
            if common[0] == version:
                return self._envelope("full", 0, version, gateway, common[1], upstreams)
        version, upstreams, parts = await self._read_all(gateway)  # the version keeps moving: one of our own
        return self._envelope("full", 0, version, gateway, self._sign_common(version, parts), upstreams)

    async def _version_and_upstreams(self, gateway: str) -> tuple[int, dict[str, str | None]]:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.get(K_VERSION)
            pipe.hgetall(upstreams_key(gateway))
            raw_version, upstreams = await pipe.execute()
        return int(raw_version or 0), _decoded(upstreams)

    async def _read_all(self, gateway: str) -> tuple[int, dict[str, str | None], list[Any]]:
        """Version, the gateway's upstreams and every shared section, read in one MULTI so they agree."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.get(K_VERSION)
            pipe.hgetall(upstreams_key(gateway))
            for kind in SNAPSHOT_KINDS:
                pipe.hvals(obj_key(kind))
            pipe.hvals(K_SNAP_SERVICES)
            pipe.hgetall(K_PKI_REVOKED)
            results = await pipe.execute()
        return int(results[0] or 0), _decoded(results[1]), results[2:]

    async def _build_common(self) -> tuple[int, bytes]:
        version, _upstreams, parts = await self._read_all("")
        common = (version, await asyncio.to_thread(self._sign_common, version, parts))  # off the loop: megabytes
        if self._common is None or self._common[0] < version:
            self._common = common
        return common

    def _sign_common(self, version: int, parts: list[Any]) -> bytes:
        members, subsystems, gateways, clients, grants, services, revoked = parts
        head = {"part": "common", "kind": "full", "version": version, "instance": INSTANCE, "generated_at": _now(),
                "config": self.config}  # fmt: skip
        return self.sign(
            orjson.dumps(head)[:-1]
            + b',"members":' + _array(members)
            + b',"subsystems":' + _array(subsystems)
            + b',"gateways":' + _array(gateways)
            + b',"services":' + _array(services)  # live (approved) revisions only (registry.store)
            + b',"clients":' + _array(clients)
            + b',"grants":' + _array(grants)
            + self._policy
            + self.pki_section(revoked)
            + b"}"
        )  # fmt: skip

    def pki_section(self, revoked: dict[bytes, bytes]) -> bytes:
        """The mesh CA and the serials of revoked certificates that have not expired yet (an expired one is refused
        by every handshake anyway, so the list stays as short as the certificates' lifetime allows)."""
        now = _now()
        serials = sorted(s.decode() for s, not_after in revoked.items() if not_after.decode() > now)
        return b',"pki":' + orjson.dumps({"ca": self._ca, "revoked": serials})

    # -- deltas ----------------------------------------------------------------------------------------------------

    async def delta(self, gateway: str, since: int, version: int) -> Envelope | None:
        """The changes since `since` for `gateway` up to at least `version` (known current), or None when only a full
        snapshot will do (§7.2). Every gateway woken by one change gets the one delta built for it."""
        cached = self._deltas.get(since)
        if cached is None or cached[0].version < version:
            cached = await self._once(("delta", since), lambda: self._build_delta(since))
        if cached is None:
            return None
        read, common = cached
        return self._envelope("delta", since, read.version, gateway, common, read.upstreams.get(gateway, {}))

    async def _build_delta(self, since: int) -> tuple[DeltaRead, bytes] | None:
        read = await read_delta(self.redis, since)
        built = (read, self._sign_delta(read)) if read is not None else None
        self._deltas[since] = built
        self._deltas.move_to_end(since)
        while len(self._deltas) > self._cache_size:
            self._deltas.popitem(last=False)
        return built

    def _sign_delta(self, read: DeltaRead) -> bytes:
        head = {"part": "common", "kind": "delta", "from": read.since, "version": read.version, "instance": INSTANCE,
                "generated_at": _now(), "config": self.config}  # fmt: skip
        sections = [
            orjson.dumps(section)
            + b":{"
            + b",".join(orjson.dumps(i) + b":" + (v or b"null") for i, v in entries)
            + b"}"
            for section, entries in read.sections.items()
        ]
        pki = self.pki_section(read.revoked) if read.revoked is not None else b""
        return self.sign(orjson.dumps(head)[:-1] + b',"changes":{' + b",".join(sections) + b"}" + pki + b"}")

    # -- the gateway's part and the envelope -----------------------------------------------------------------------

    def _envelope(
        self, kind: str, since: int, version: int, gateway: str, common: bytes, upstreams: dict[str, str | None]
    ) -> Envelope:
        key = (kind, since, version, gateway)
        part = self._parts.get(key)
        if part is None:
            head: dict[str, Any] = {"part": "gateway", "kind": kind, "version": version, "gateway": gateway}
            if kind == "delta":
                head["from"] = since
            head["upstreams"] = upstreams
            part = self._parts[key] = self.sign(orjson.dumps(head))
            while len(self._parts) > self._cache_size * 4:
                self._parts.popitem(last=False)
        body = b'{"kind":"%s","version":%d,"common":"%s","gateway":"%s"}' % (kind.encode(), version, common, part)
        return Envelope(version, kind, body)

    def sign(self, payload: bytes) -> bytes:
        """A compact JWS of the payload under the registry key."""
        signing_input = self._protected + b"." + _b64(payload)
        return signing_input + b"." + _b64(self._signer.sign(signing_input, self.key))

    async def _once(self, key: Any, build: Callable[[], Awaitable[T]]) -> T:
        """Run `build` once for every caller that asks for the same thing while it runs."""
        flight = self._flights.get(key)
        if flight is None:
            flight = asyncio.ensure_future(build())
            self._flights[key] = flight
            flight.add_done_callback(lambda _f: self._flights.pop(key, None))
        result: T = await asyncio.shield(flight)
        return result
