"""The connector's control-plane calls to the registry (protocol §4.3, §5), through registry.client.RegistryClient:
fetch the hosting gateway's keys and register the service. They are a handful of blocking calls, so they run in a
worker thread and never on the request path.

Several registries may serve the same Redis (issue 17): `url` may be a comma list, and a call the registry in use
cannot answer (unreachable or 5xx) is asked of the next one, which is then kept."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import anyio

from registry.client import RegistryClient, RegistryError

log = logging.getLogger("lienthong.connector.registry")


def _unavailable(exc: RegistryError) -> bool:
    return exc.status == 0 or exc.status >= 500  # 0: the client could not reach it


class RegistryAccess:
    """Calls the registry as an integrator of the provider's member (kid = a client key of `subsystem`)."""

    def __init__(
        self, url: str, key_path: Path, kid: str, subsystem: str, *, timeout: float = 5.0, ca: Path | None = None
    ) -> None:
        """`ca`: the mesh CA certificate an https registry must chain to."""
        urls = [u.rstrip("/") for u in url.replace(",", " ").split()]
        if not urls:
            raise ValueError("no registry URL given")
        self.clients = [RegistryClient(u, key_path, kid, iss=subsystem, timeout=timeout, ca=ca) for u in urls]
        self._at = 0

    @property
    def client(self) -> RegistryClient:
        """The registry in use (registration and certificate renewal call it directly)."""
        return self.clients[self._at]

    def _get_gateway(self, gateway: str) -> Any:
        for _ in self.clients:
            try:
                return self.client.get_gateway(gateway)
            except RegistryError as exc:
                if not _unavailable(exc) or len(self.clients) < 2:
                    raise
                failed = self.client.base_url
                self._at = (self._at + 1) % len(self.clients)
                log.warning(
                    "registry %s failed (%s); using %s", failed, exc.status or "unreachable", self.client.base_url
                )
        raise RegistryError(0, {"code": "unreachable", "detail": "no registry answered"})

    async def gateway_keys(self, gateway: str) -> list[dict[str, Any]]:
        doc = await anyio.to_thread.run_sync(self._get_gateway, gateway)
        found = doc.get("keys") if isinstance(doc, dict) else None
        if not isinstance(found, list):
            raise ValueError(f"the registry answered gateway {gateway} without a key list")
        return [k for k in found if isinstance(k, dict)]

    def close(self) -> None:
        for client in self.clients:
            client.close()
