"""The hosting gateway's public keys: the only keys a connector accepts assertions from.

They come from the registry (refetched on an unknown kid, at most once per interval, so a flood of bad kids cannot
turn into a flood of registry calls) or, offline and in tests, from a JSON file or list of JWKs.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import orjson

from connectors.sdk.registry_access import RegistryAccess
from lienthong.keys import PublicKey, public_key_from_jwk

log = logging.getLogger("lienthong.connector.keys")


def parse_jwks(jwks: list[dict[str, Any]]) -> dict[str, PublicKey]:
    found: dict[str, PublicKey] = {}
    for jwk in jwks:
        kid = jwk.get("kid")
        if jwk.get("revoked") or not isinstance(kid, str):
            continue
        found[kid] = public_key_from_jwk(jwk)
    return found


def load_jwks_file(path: Path) -> list[dict[str, Any]]:
    doc = orjson.loads(Path(path).read_bytes())
    if isinstance(doc, dict) and isinstance(doc.get("keys"), list):  # also accept a JWK Set
        doc = doc["keys"]
    if not isinstance(doc, list):
        raise ValueError(f"{path}: expected a JSON list of JWKs")
    return [k for k in doc if isinstance(k, dict)]


class GatewayKeys:
    def __init__(
        self,
        gateway: str,
        *,
        static: list[dict[str, Any]] | None = None,
        registry: RegistryAccess | None = None,
        refresh_interval: float = 5.0,
    ) -> None:
        self.gateway = gateway
        self.registry = registry
        self.refresh_interval = refresh_interval
        self.keys: dict[str, PublicKey] = parse_jwks(static) if static is not None else {}
        self._last_fetch = float("-inf")

    @property
    def loaded(self) -> bool:
        return bool(self.keys)

    def get(self, kid: str) -> PublicKey | None:
        return self.keys.get(kid)

    async def refresh(self, *, force: bool = False) -> bool:
        """Refetch from the registry unless done within the interval; True if the key set was replaced."""
        if self.registry is None:
            return False
        now = time.monotonic()
        if not force and now - self._last_fetch < self.refresh_interval:
            return False
        self._last_fetch = now
        try:
            fresh = parse_jwks(await self.registry.gateway_keys(self.gateway))
        except Exception as exc:  # the registry being down must not take the connector down
            log.warning("could not fetch the keys of gateway %s: %s", self.gateway, exc)
            return False
        self.keys = fresh
        return True

    async def ensure(self, kid: str) -> PublicKey | None:
        key = self.keys.get(kid)
        if key is None and await self.refresh():
            key = self.keys.get(kid)
        return key
