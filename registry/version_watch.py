"""Wakes long-polling snapshot requests when the registry's version moves: one pub/sub subscription per process
(the version is published in the same transaction as each change) plus a slow poll in case a message is lost."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from lienthong.background import stop_task
from registry.store import CHANNEL, K_VERSION

log = logging.getLogger("lienthong.registry.watch")

FALLBACK_POLL_SECONDS = 1.0


class VersionWatch:
    def __init__(self, redis: aioredis.Redis) -> None:
        self.redis = redis
        self.version = 0
        self._moved = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="registry-version-watch")

    async def stop(self) -> None:
        await stop_task(self._task)

    def _observe(self, version: int) -> None:
        if version > self.version:
            self.version = version
            moved, self._moved = self._moved, asyncio.Event()
            moved.set()

    async def _run(self) -> None:
        while True:
            try:
                pubsub = self.redis.pubsub()
                await pubsub.subscribe(CHANNEL)
                try:
                    while True:
                        msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=FALLBACK_POLL_SECONDS)
                        if msg is not None:
                            self._observe(int(msg["data"]))
                        else:
                            self._observe(int(await self.redis.get(K_VERSION) or 0))
                finally:
                    await pubsub.aclose()
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError, ValueError) as exc:
                log.warning("version watch lost Redis (%s); retrying", exc)
                await asyncio.sleep(FALLBACK_POLL_SECONDS)

    def release(self) -> None:
        """Wake every parked long poll and park no new one: the process is stopping (a gateway simply asks again),
        so no request is left for the server to cancel."""
        self._closing = True
        self._moved.set()

    async def wait_past(self, version: int, timeout: float) -> None:
        """Return as soon as the version is above `version`, or after `timeout` seconds, or once released."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.version <= version and not self._closing:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._moved.wait(), remaining)
