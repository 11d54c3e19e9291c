"""Assemble and sign the snapshot (protocol §7) from the stored JSON strings, without parsing the objects.

The part every gateway shares is built once per version; each gateway's document only adds its header and its
own upstream URLs, then is signed as a compact JWS and cached for that version.
"""

from __future__ import annotations

import base64
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
import redis.asyncio as aioredis
from jwt.algorithms import get_default_algorithms

from lienthong.ids import INSTANCE
from lienthong.keys import PrivateKey, algorithm_of
from registry.store import K_PKI_REVOKED, K_SNAP_SERVICES, K_VERSION, SNAPSHOT_KINDS, obj_key, upstreams_key


def _b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def _array(items: list[bytes]) -> bytes:
    return b"[" + b",".join(items) + b"]"


@dataclass(frozen=True, slots=True)
class SignedSnapshot:
    version: int
    gateway: str
    jws: bytes


class SnapshotBuilder:
    """Builds per-version shared bodies and per-gateway signed documents, keeping a few recent ones.

    base64url is position-aligned every 3 bytes, so the shared body is encoded once per version and each gateway's
    small header (padded with JSON whitespace to a multiple of 3 bytes) is encoded in front of it.
    """

    def __init__(
        self, redis: aioredis.Redis, key: PrivateKey, kid: str, cache_size: int = 64,
        upstream_policy: dict[str, Any] | None = None, ca_pems: tuple[str, ...] = (),
    ) -> None:  # fmt: skip
        self.redis = redis
        self._ca = list(ca_pems)  # the mesh CA certificates, for the `pki` section
        # the mesh's upstream allowlist and the registry's own endpoints: gateways check connectors against it
        self._policy = b',"upstream_policy":' + orjson.dumps(upstream_policy or {"allow": [], "mesh": []})
        self.key = key
        self.kid = kid
        self.algorithm = algorithm_of(key)
        self._signer = get_default_algorithms()[self.algorithm]
        self._protected = _b64(orjson.dumps({"alg": self.algorithm, "kid": kid, "typ": "JOSE"}))
        self._body: tuple[int, bytes] | None = None  # version, base64url of (shared body + "}")
        self._signed: OrderedDict[tuple[int, str], SignedSnapshot] = OrderedDict()
        self._cache_size = cache_size

    async def _read(self, gateway: str, with_body: bool) -> tuple[int, dict[bytes, bytes], list[list[bytes]]]:
        """Version, the gateway's upstreams and (if asked) every object, read in one MULTI so they agree."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.get(K_VERSION)
            pipe.hgetall(upstreams_key(gateway))
            if with_body:
                for kind in SNAPSHOT_KINDS:
                    pipe.hvals(obj_key(kind))
                pipe.hvals(K_SNAP_SERVICES)
                pipe.hgetall(K_PKI_REVOKED)
            results = await pipe.execute()
        return int(results[0] or 0), results[1], results[2:]

    def pki_section(self, revoked: dict[bytes, bytes]) -> bytes:
        """The mesh CA and the serials of revoked certificates that have not expired yet (an expired one is refused
        by every handshake anyway, so the list stays as short as the certificates' lifetime allows)."""
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        serials = sorted(s.decode() for s, not_after in revoked.items() if not_after.decode() > now)
        return b',"pki":' + orjson.dumps({"ca": self._ca, "revoked": serials})

    def shared_body(self, parts: list[Any]) -> bytes:
        """Every gateway's part; `services` holds live (approved) revisions only (registry.store)."""
        members, subsystems, gateways, clients, grants, services, revoked = parts
        return (
            b'"members":' + _array(members)
            + b',"subsystems":' + _array(subsystems)
            + b',"gateways":' + _array(gateways)
            + b',"services":' + _array(services)
            + b',"clients":' + _array(clients)
            + b',"grants":' + _array(grants)
            + self._policy
            + self.pki_section(revoked)
        )  # fmt: skip

    async def build(self, gateway: str) -> SignedSnapshot:
        """The signed snapshot for `gateway` at the current version."""
        cached_body = self._body
        version, upstreams, parts = await self._read(gateway, with_body=False)
        hit = self._signed.get((version, gateway))
        if hit is not None:
            return hit
        if cached_body is None or cached_body[0] != version:
            version, upstreams, parts = await self._read(gateway, with_body=True)
            cached_body = (version, self.encode_body(self.shared_body(parts)))
            self._body = cached_body
        signed = SignedSnapshot(version, gateway, self.sign(self.header(version, gateway, upstreams), cached_body[1]))
        self._signed[(version, gateway)] = signed
        while len(self._signed) > self._cache_size:
            self._signed.popitem(last=False)
        return signed

    @staticmethod
    def encode_body(body: bytes) -> bytes:
        return _b64(body + b"}")

    @staticmethod
    def header(version: int, gateway: str, upstreams: dict[bytes, bytes]) -> bytes:
        """The gateway's part of the document: `{...,` padded with spaces to a multiple of 3 bytes."""
        head: dict[str, Any] = {
            "version": version,
            "instance": INSTANCE,
            "gateway": gateway,
            "generated_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "upstreams": {k.decode(): v.decode() for k, v in upstreams.items()},
        }
        prefix = orjson.dumps(head)[:-1]
        return prefix + b" " * (-(len(prefix) + 1) % 3) + b","

    def sign(self, header: bytes, encoded_body: bytes) -> bytes:
        """Compact JWS over header + body, reusing the body's base64url."""
        signing_input = self._protected + b"." + _b64(header) + encoded_body
        signature = self._signer.sign(signing_input, self.key)
        return signing_input + b"." + _b64(signature)
