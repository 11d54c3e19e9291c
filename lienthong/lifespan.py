"""The ASGI lifespan protocol for the mesh's hand-written ASGI apps (gateway, connector SDK)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Message = MutableMapping[str, Any]

log = logging.getLogger("lienthong.lifespan")


async def serve_lifespan(
    receive: Callable[[], Awaitable[Message]],
    send: Callable[[Message], Awaitable[None]],
    startup: Callable[[], Awaitable[None]],
    shutdown: Callable[[], Awaitable[None]],
    what: str,
) -> None:
    """Run startup and shutdown when the server says so; a failed startup is logged and reported to the server,
    which then refuses to serve."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            try:
                await startup()
            except Exception as exc:
                log.exception("%s startup failed", what)
                await send({"type": "lifespan.startup.failed", "message": str(exc)})
                return
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await shutdown()
            await send({"type": "lifespan.shutdown.complete"})
            return
