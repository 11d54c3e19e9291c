"""Cases 2a and 2b: the floor under any Python gateway here, a proxy that only proxies.

2a is the gateway's own server (gateway.http_server) and upstream client (gateway.upstream) with an app that
forwards each /r1 call as it came: no routing, no policies, no assertion. 2b is the pair the gateway ran on before,
granian (RSGI, its fastest interface) with pyreqwest. Both call the same nginx upstream in the same run as nginx's
own proxy, which shows how the server/client pair was chosen and how much of case 3 is the mesh's own work.

    python -m bench.proxy_floor own|granian --port P --upstream http://127.0.0.1:U
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import MutableMapping
from typing import Any

from gateway.breaker import Breakers
from gateway.calls import Reply
from gateway.upstream import UpstreamClient
from lienthong.problem import Problem

UPSTREAM_ENV = "LIENTHONG_FLOOR_UPSTREAM"
HEALTH = b'{"status":"ok"}'


def _target(raw_path: str, query: bytes) -> str:
    """/r1/record/1?x -> /record/1?x: what the upstream is asked for."""
    return raw_path[3:] + ("?" + query.decode("latin-1") if query else "")


class ForwardApp:
    """The least an app on the gateway's server can do: forward, answer what came back."""

    body_limit = 1 << 20

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self._client: UpstreamClient | None = None

    async def r1(
        self, method: str, raw_path: str, query: bytes, headers: dict[str, str], body: bytes, started: float,
        body_refused: Problem | None, peer: Any = None,
    ) -> Reply:  # fmt: skip
        del headers, started, body_refused, peer
        if self._client is None:
            self._client = UpstreamClient(Breakers(5, 5.0))
        answer = await self._client.call(method=method, base=self.upstream, target=_target(raw_path, query),
                                         headers={}, body=body, timeout_ms=5000, what="the upstream")  # fmt: skip
        return Reply(answer.status, [("content-type", "application/json")], answer.body)

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": HEALTH})


class GranianApp:
    """The same forwarding on granian's RSGI interface with pyreqwest; made by granian in its worker."""

    def __init__(self) -> None:
        self.upstream = os.environ.get(UPSTREAM_ENV, "")
        self._client: Any = None

    def __rsgi_init__(self, loop: asyncio.AbstractEventLoop) -> None:
        del loop

    async def __rsgi__(self, scope: Any, protocol: Any) -> None:
        path: str = scope.path
        if not path.startswith("/r1/"):
            protocol.response_bytes(200, [("content-type", "application/json")], HEALTH)
            return
        if self._client is None:
            from pyreqwest.client import ClientBuilder

            self._client = ClientBuilder().tcp_nodelay(True).build()
        query = scope.query_string.encode("latin-1") if scope.query_string else b""
        response = await self._client.request(scope.method, self.upstream + _target(path, query)).build().send()
        body = bytes(await response.bytes())
        protocol.response_bytes(response.status, [("content-type", "application/json")], body)


async def _serve_own(port: int, upstream: str) -> None:
    from gateway.http_server import Server
    from gateway.workers import listen

    server = Server(ForwardApp(upstream), asyncio.get_running_loop())
    await server.start(listen("127.0.0.1", port))
    await asyncio.Event().wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.proxy_floor", description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=("own", "granian"))
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="base URL of the upstream, e.g. http://127.0.0.1:9001")
    args = parser.parse_args(argv)
    if args.kind == "own":
        import uvloop

        uvloop.run(_serve_own(args.port, args.upstream.rstrip("/")))
        return 0
    try:
        from granian import Granian
        from granian.constants import Interfaces, Loops
    except ImportError:
        sys.stderr.write("granian is not installed (pip install '.[bench]')\n")
        return 2
    os.environ[UPSTREAM_ENV] = args.upstream.rstrip("/")
    Granian("bench.proxy_floor:GranianApp", address="127.0.0.1", port=args.port, interface=Interfaces.RSGI,
            workers=1, loop=Loops.uvloop, factory=True, log_access=False).serve()  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
