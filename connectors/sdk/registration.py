"""Registration: a connector registers its own service, on start.

One flow. `lienthong connector serve NAME --registry URL --key FILE --kid KID` registers the service with the
OpenAPI document it serves, its hosting gateway and its public URL as the upstream, then keeps it so on every start:

- not registered yet: it is registered, pending approval (approval stays an admin's act:
  `lienthong services approve ID`, then grants);
- registered with exactly what this connector serves: nothing is written, the log says so;
- registered otherwise (by `lienthong services register`, or by an earlier version of the connector): the log names
  the fields that differ and says the connector's registration replaces them; a change the registry wants approved
  again waits for the admin while the approved revision keeps serving.

So a lienthong connector needs no `lienthong services register`; that command is for upstreams that are not
lienthong connectors (an existing REST API behind a gateway). The registry being down does not keep the connector
from serving: registration is retried in the background, backing off up to a minute."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import anyio
import orjson

from connectors.sdk.runtime import Runtime
from registry.client import RegistryClient, RegistryError

log = logging.getLogger("lienthong.connector.registration")

# what the connector decides about its service; everything else (approval, endpoints, version) is the registry's
FIELDS = ("version_label", "name", "description", "gateway", "upstream_url", "timeout_ms", "openapi")


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


def _pending(sid: str) -> str:
    return f"pending approval: an admin runs `lienthong services approve {sid}`"


def sync_registration(client: RegistryClient, doc: dict[str, Any]) -> str:
    """Make the registry's record of the service what `doc` says; returns what was done, as a sentence for the log."""
    sid = doc["id"]
    # as JSON carries it, so a YAML date in the document compares equal to what the registry stored
    fields: dict[str, Any] = orjson.loads(orjson.dumps({k: doc[k] for k in FIELDS}, default=str))
    for _ in range(3):  # another process may register between our read and our write: read again
        try:
            current = client.get_service(sid)
        except RegistryError as exc:
            if exc.status != 404:
                raise
            try:
                client.register_service(sid, **fields)
            except RegistryError as exc2:
                if exc2.status == 409:
                    continue
                raise
            return f"service {sid} registered, {_pending(sid)}"
        differ = [k for k in FIELDS if current.get(k) != fields[k]]
        if not differ:
            state = "approved" if current.get("approved") else _pending(sid)
            return f"service {sid} is already registered as this connector serves it ({state}); nothing changed"
        try:
            after = client.update_service(sid, fields, if_match=current.get("version"))
        except RegistryError as exc:
            if exc.status in (409, 412):  # changed meanwhile
                continue
            raise
        said = (
            f"service {sid} was registered with another {', '.join(differ)} (by `lienthong services register`, or an "
            "earlier version of this connector); a connector keeps its own registration, so the registry now has "
            "what this connector serves"
        )
        if not after.get("approved"):
            said += f"; {_pending(sid)}" + (", the approved revision keeps serving" if current.get("approved") else "")
        return said
    raise RuntimeError(f"service {sid} kept changing in the registry while it was being registered")


async def register_forever(runtime: Runtime, openapi: dict[str, Any], *, max_delay: float = 60.0) -> None:
    """Try until the registry has the service as this connector serves it, backing off from 1 s to `max_delay`."""
    if runtime.registry is None:
        return
    doc = service_document(runtime, openapi)
    client = runtime.registry.client
    delay = 1.0
    while True:
        try:
            said = await anyio.to_thread.run_sync(sync_registration, client, doc)
            runtime.registered = True
            log.info("%s", said)
            return
        except Exception as exc:  # logged and retried; the connector keeps serving
            log.warning("registering %s failed (%s); retrying in %.0f s", doc["id"], exc, delay)
        await asyncio.sleep(delay)
        delay = min(delay * 2, max_delay)
