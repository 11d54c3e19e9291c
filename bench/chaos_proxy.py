"""A fault-injecting TCP proxy for the chaos run: real sockets between a gateway and a connector, no mocks.

It runs its own asyncio loop in a thread. `pass` forwards bytes as they come; `delay` holds every chunk the
upstream sends back for a fixed time (added latency); `hang` forwards nothing in either direction while the
connections stay open, as an upstream that accepted the call and never answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from dataclasses import dataclass
from typing import Literal

Mode = Literal["pass", "delay", "hang"]


@dataclass
class FaultState:
    mode: Mode = "pass"
    delay_ms: int = 0


class FaultProxy:
    """Listens on 127.0.0.1:`port` (0: a free one) and forwards to `upstream_host`:`upstream_port`."""

    def __init__(self, upstream_host: str, upstream_port: int, port: int = 0) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = port
        self.state = FaultState()
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._changed: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, name="fault-proxy", daemon=True)

    @property
    def url(self) -> str:
        """The upstream URL to register: the bytes are TLS end to end (gateway to connector), the proxy sees none."""
        return f"https://127.0.0.1:{self.port}"

    def start(self) -> FaultProxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(10)
        return self

    def set(self, mode: Mode, delay_ms: int = 0) -> None:
        """Switch the fault for every connection, open or new."""

        def apply() -> None:
            self.state = FaultState(mode, delay_ms)
            assert self._changed is not None
            self._changed.set()
            self._changed = asyncio.Event()

        self._loop.call_soon_threadsafe(apply)

    def stop(self) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def _listen(self) -> None:
        self._changed = asyncio.Event()
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def _gate(self, from_upstream: bool) -> None:
        """Wait as the current fault says before passing one chunk on."""
        while self.state.mode == "hang":
            assert self._changed is not None
            await self._changed.wait()
        if from_upstream and self.state.mode == "delay":
            await asyncio.sleep(self.state.delay_ms / 1000)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, from_upstream: bool) -> None:
        try:
            while chunk := await reader.read(65536):
                await self._gate(from_upstream)
                writer.write(chunk)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(ConnectionError, OSError):
                writer.close()

    async def _handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            client_writer.close()
            return
        await asyncio.gather(
            self._pump(client_reader, up_writer, from_upstream=False),
            self._pump(up_reader, client_writer, from_upstream=True),
        )
