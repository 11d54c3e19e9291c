"""The connector's control-plane calls to the registry (protocol §4.3, §5): fetch the hosting gateway's keys and
register the service. httpx is fine here: these are a handful of calls, never the hot path."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import httpx

from lienthong import keys, tokens

log = logging.getLogger("lienthong.connector.registry")


class RegistryAccess:
    """Signs registry tokens as an integrator of the provider's member (kid = a client key of `subsystem`)."""

    def __init__(self, url: str, key_path: Path, kid: str, subsystem: str, *, timeout: float = 5.0) -> None:
        self.url = url.rstrip("/")
        self.key = keys.load_private(key_path)
        self.kid = kid
        self.subsystem = subsystem
        self.timeout = timeout

    def token(self) -> str:
        claims = {"iss": self.subsystem, "sub": self.subsystem, "aud": "registry"}
        return tokens.sign(self.key, self.kid, claims, lifetime=60)

    def _headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token()}", **(extra or {})}

    async def gateway_keys(self, gateway: str) -> list[dict[str, Any]]:
        async with httpx.AsyncClient(timeout=self.timeout) as client:
            r = await client.get(f"{self.url}/v1/gateways/{gateway}", headers=self._headers())
            r.raise_for_status()
            body = r.json()
        found = body.get("keys") if isinstance(body, dict) else None
        if not isinstance(found, list):
            raise ValueError(f"registry answered gateway {gateway} without a key list")
        return [k for k in found if isinstance(k, dict)]

    async def register_service(self, service: dict[str, Any]) -> str:
        """Create the service, or update it when it exists (If-Match with its current version). Returns the action."""
        async with httpx.AsyncClient(timeout=self.timeout) as client:
            r = await client.post(f"{self.url}/v1/services", json=service, headers=self._headers())
            if r.status_code in (200, 201):
                return "created"
            if r.status_code != 409:
                r.raise_for_status()
                raise httpx.HTTPStatusError(f"unexpected {r.status_code}", request=r.request, response=r)
            item = f"{self.url}/v1/services/{service['id']}"
            current = await client.get(item, headers=self._headers())
            current.raise_for_status()
            etag = current.headers.get("ETag") or f'"{current.json().get("version", "")}"'
            r = await client.put(item, json=service, headers=self._headers({"If-Match": etag}))
            r.raise_for_status()
            return "updated"
