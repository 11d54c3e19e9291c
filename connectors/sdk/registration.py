"""Register (or update) the connector's service and OpenAPI document in the registry on start, retrying in the
background: a registry that is down must not keep the connector from serving. Approval stays an admin's act."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from connectors.sdk.runtime import Runtime

log = logging.getLogger("lienthong.connector.registration")


def service_document(runtime: Runtime, openapi: dict[str, Any]) -> dict[str, Any]:
    d = runtime.definition
    return {
        "id": d.service_id,
        "version_label": d.version_label,
        "name": d.title,
        "description": d.description,
        "gateway": runtime.config.gateway,
        "upstream_url": runtime.config.public_url,
        "timeout_ms": d.timeout_ms,
        "openapi": openapi,
    }


async def register_forever(runtime: Runtime, openapi: dict[str, Any], *, max_delay: float = 60.0) -> None:
    """Try until the registry accepts the service, backing off from 1 s to `max_delay`."""
    if runtime.registry is None:
        return
    doc = service_document(runtime, openapi)
    delay = 1.0
    while True:
        try:
            action = await runtime.registry.register_service(doc)
            runtime.registered = True
            log.info("service %s %s in the registry", doc["id"], action)
            return
        except Exception as exc:  # logged and retried; the connector keeps serving
            log.warning("registering %s failed (%s); retrying in %.0f s", doc["id"], exc, delay)
        await asyncio.sleep(delay)
        delay = min(delay * 2, max_delay)
