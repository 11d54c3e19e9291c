"""The connector's control-plane calls to the registry (protocol §4.3, §5), through registry.client.RegistryClient:
fetch the hosting gateway's keys and register the service. They are a handful of blocking calls, so they run in a
worker thread and never on the request path."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import anyio

from registry.client import RegistryClient

log = logging.getLogger("lienthong.connector.registry")


class RegistryAccess:
    """Calls the registry as an integrator of the provider's member (kid = a client key of `subsystem`)."""

    def __init__(
        self, url: str, key_path: Path, kid: str, subsystem: str, *, timeout: float = 5.0, ca: Path | None = None
    ) -> None:
        """`ca`: the mesh CA certificate an https registry must chain to."""
        self.client = RegistryClient(url, key_path, kid, iss=subsystem, timeout=timeout, ca=ca)

    async def gateway_keys(self, gateway: str) -> list[dict[str, Any]]:
        doc = await anyio.to_thread.run_sync(self.client.get_gateway, gateway)
        found = doc.get("keys") if isinstance(doc, dict) else None
        if not isinstance(found, list):
            raise ValueError(f"the registry answered gateway {gateway} without a key list")
        return [k for k in found if isinstance(k, dict)]

    def close(self) -> None:
        self.client.close()
