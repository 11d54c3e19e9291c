"""Redis high availability through Sentinel (issue 17): real redis-server processes, a primary, a replica and three
sentinels (`redis-server <conf> --sentinel`). A writer keeps writing through the redis+sentinel:// client while the
primary is killed with SIGKILL; every write a replica acknowledged (WAIT) before the kill must survive the failover,
and the same client must go on writing to the promoted replica. A registry process then runs on the sentinel URL."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis

from lienthong.redis_connection import (
    EmbeddedRedis,
    async_client,
    async_single_client,
    free_port,
    redis_executable,
    resolve_url,
    sync_client,
    wait_replicated,
)
from registry.client import RegistryError
from tests.registry_support import start_registry

MASTER = "mymaster"


def _until(what: str, check: object, timeout: float = 60.0) -> None:
    """Poll `check` (a callable) until true; the bound only catches a hang."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():  # type: ignore[operator]
                return
        except redis.RedisError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@dataclass
class Cluster:
    primary: EmbeddedRedis
    replica: EmbeddedRedis
    sentinel_ports: list[int]
    sentinels: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return "redis+sentinel://" + ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports) + f"/{MASTER}"

    def sentinel(self, i: int = 0) -> redis.Redis:
        return redis.Redis(port=self.sentinel_ports[i], socket_timeout=1, decode_responses=True)

    def master_port(self) -> int:
        host_port: tuple[str, int] = self.sentinel().sentinel_get_master_addr_by_name(MASTER)  # type: ignore[assignment]
        return int(host_port[1])


@pytest.fixture(scope="module")
def ha(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    base = tmp_path_factory.mktemp("sentinel")
    primary = EmbeddedRedis(base / "primary", extra_args=["--repl-diskless-sync-delay", "0"])  # no 5 s first sync
    primary.start()
    replica = EmbeddedRedis(base / "replica", extra_args=["--replicaof", "127.0.0.1", str(primary.port)])
    replica.start()
    ha = Cluster(primary, replica, [free_port() for _ in range(3)])
    try:
        for i, port in enumerate(ha.sentinel_ports):
            folder = base / f"sentinel{i}"
            folder.mkdir()
            conf = folder / "sentinel.conf"  # a sentinel rewrites its config file, so each has its own
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {folder}\nlogfile {folder / 'sentinel.log'}\n"
                f"sentinel monitor {MASTER} 127.0.0.1 {primary.port} 2\n"
                f"sentinel down-after-milliseconds {MASTER} 1000\n"
                f"sentinel failover-timeout {MASTER} 3000\n"
            )
            ha.sentinels.append(
                subprocess.Popen([redis_executable(), str(conf), "--sentinel"], stdout=subprocess.DEVNULL)
            )
        primary_client = redis.Redis(port=primary.port, decode_responses=True)
        _until(
            "the replica to sync", lambda: primary_client.info("replication").get("slave0", {}).get("state") == "online"
        )
        for i in range(3):  # a failover needs a majority of sentinels that know each other and the replica
            s = ha.sentinel(i)
            _until(f"sentinel {i} to see the others", lambda s=s: len(s.sentinel_sentinels(MASTER)) == 2)
            _until(f"sentinel {i} to see the replica", lambda s=s: len(s.sentinel_slaves(MASTER)) == 1)
        yield ha
    finally:
        for proc in ha.sentinels:
            proc.kill()
            proc.wait()
        primary.stop()
        replica.stop()


@dataclass
class Writer:
    """INCR + SET + WAIT 1 100 in one pipeline (one connection, so WAIT covers these writes); a write counts as
    acknowledged only when a replica has it."""

    client: redis.Redis
    acked: list[tuple[int, int, float]] = field(default_factory=list)  # (write number, counter, time acknowledged)
    last_success: float = 0.0  # after the failover there is no replica left, so writes succeed unacknowledged
    errors: int = 0
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        i = 0
        while not self.stop.is_set():
            i += 1
            try:
                with self.client.pipeline(transaction=False) as pipe:
                    pipe.incr("ha:counter")
                    pipe.set(f"ha:key:{i}", i)
                    pipe.execute_command("WAIT", 1, 100)
                    n, _, replicas = pipe.execute()
            except redis.RedisError:
                self.errors += 1
                time.sleep(0.02)
                continue
            self.last_success = time.monotonic()
            if int(replicas) >= 1:
                self.acked.append((i, int(n), time.monotonic()))


def replicated(url: str) -> int | None:
    """wait_replicated after one write: replicas that acknowledged it, None when the primary has none."""

    async def run() -> int | None:
        client = async_single_client(url, who="this test")
        try:
            await client.set("ha:probe", "1")
            return await wait_replicated(client, timeout_ms=1000)
        finally:
            await client.aclose()

    return asyncio.run(run())


def test_failover_keeps_acknowledged_writes_and_clients_follow(ha: Cluster) -> None:
    assert replicated(ha.url) == 1
    client = sync_client(ha.url)
    assert isinstance(client, redis.Redis)
    writer = Writer(client)
    thread = threading.Thread(target=writer.run, daemon=True)
    thread.start()
    _until("writes to be acknowledged", lambda: len(writer.acked) >= 50, timeout=10)

    killed_at = time.monotonic()
    ha.primary.kill()  # SIGKILL: no shutdown, no final sync
    _until("sentinels to promote the replica", lambda: ha.master_port() == ha.replica.port)
    _until("the client to write to the new primary", lambda: writer.last_success > killed_at)
    writer.stop.set()
    thread.join(10)

    before = [i for i, _, t in writer.acked if t < killed_at]
    assert len(before) >= 50 and writer.errors >= 1  # the kill did interrupt the writer
    new_primary = redis.Redis(port=ha.replica.port)
    assert new_primary.execute_command("ROLE")[0] == b"master"
    assert int(new_primary.get("ha:counter") or 0) >= max(n for _, n, _ in writer.acked)
    missing = [i for i in before if new_primary.get(f"ha:key:{i}") != str(i).encode()]
    assert missing == [], f"acknowledged writes lost in the failover: {missing[:10]}"
    # The same client object reached the promoted replica (asked the sentinels again); on a loaded machine a sentinel
    # may still be settling the failover and answer "no master" for a moment, hence the (hang-only) wait.
    pool = client.connection_pool
    _until("the client's sentinels to name the new primary",
           lambda: pool.get_master_address()[1] == ha.replica.port)  # type: ignore[attr-defined]  # fmt: skip
    client.close()

    async def async_round_trip() -> tuple[object, list[object]]:
        aclient = async_client(ha.url)
        try:
            await aclient.set("ha:async", "yes")
            return await aclient.get("ha:async"), await aclient.execute_command("ROLE")
        finally:
            await aclient.aclose()

    assert replicated(ha.url) is None  # the promoted replica has no replica of its own: nothing to wait for
    value, role = asyncio.run(async_round_trip())
    assert value == b"yes" and role[0] == b"master"
    assert new_primary.get("ha:async") == b"yes"


def test_registry_runs_on_the_sentinel_url(ha: Cluster, tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    registry = start_registry(tmp_path, ha.url, logs)
    try:
        admin = registry.admin_client()
        admin.add_gateway("sentinel-gw", "http://127.0.0.1:8700")
        admin.add_member("VN/GOV/SENTINEL", "Written through Sentinel", "sentinel-gw")
        assert admin.get_member("VN/GOV/SENTINEL")["name"] == "Written through Sentinel"
    finally:
        registry.stop()
    # The write is on the primary Sentinel names, not on some other server.
    primary = redis.Redis(port=ha.master_port())
    assert any(b"VN/GOV/SENTINEL" in k for k in primary.hkeys("lienthong:registry:obj:members"))


def test_sentinel_environment_and_bad_urls(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.setenv("REDIS_SENTINELS", "10.0.0.1:26379,10.0.0.2:26379")
    monkeypatch.delenv("REDIS_SENTINEL_MASTER", raising=False)
    assert resolve_url(tmp_path) == ("redis+sentinel://10.0.0.1:26379,10.0.0.2:26379/mymaster", None)
    monkeypatch.setenv("REDIS_SENTINEL_MASTER", "registry")
    assert resolve_url(tmp_path)[0].endswith("/registry")
    for bad in ("http://127.0.0.1:6379", "redis+sentinel://127.0.0.1:26379", "redis+sentinel://h/mymaster",
                "redis+cluster://127.0.0.1:7000/3", "redis+sentinel://127.0.0.1:1/m/x"):  # fmt: skip
        with pytest.raises(ValueError, match="Redis URL"):
            sync_client(bad)


def test_a_registry_write_is_acknowledged_only_once_a_replica_holds_it(tmp_path: Path) -> None:
    """docs/policies.md: with a replica, the registry answers a change only after WAIT saw a replica take it; a
    replica that cannot confirm (stopped here with SIGSTOP, so it stays connected) makes the change a 503 to retry,
    never a silent success a failover could lose."""
    primary = EmbeddedRedis(tmp_path / "p", extra_args=["--repl-diskless-sync-delay", "0"])
    primary.start()
    replica = EmbeddedRedis(tmp_path / "r", extra_args=["--replicaof", "127.0.0.1", str(primary.port)])
    replica.start()
    logs = tmp_path / "logs"
    logs.mkdir()
    registry = start_registry(tmp_path, primary.url, logs)
    try:
        on_primary = redis.Redis(port=primary.port, decode_responses=True)
        _until("the replica to sync", lambda: on_primary.info("replication").get("slave0", {}).get("state") == "online")
        admin = registry.admin_client()
        admin.add_gateway("durable-gw", "http://127.0.0.1:8700")  # acknowledged: the replica holds it
        assert redis.Redis(port=replica.port).hexists("lienthong:registry:obj:gateways", "durable-gw")
        assert replica.process is not None
        os.kill(replica.process.pid, signal.SIGSTOP)
        try:
            with pytest.raises(RegistryError) as refused:
                admin.add_member("VN/GOV/DURABLE", "Not confirmed", "durable-gw")
        finally:
            os.kill(replica.process.pid, signal.SIGCONT)
        assert refused.value.status == 503 and refused.value.problem["code"] == "storage-unavailable"
    finally:
        registry.stop()
        replica.stop()
        primary.stop()


def test_meter_counts_reach_the_primary_sentinel_names(ha: Cluster, tmp_path: Path) -> None:
    """The meter takes a Sentinel URL like the registry (issue 17): its flushed counts land on the primary."""
    from policies.meter import Meter
    from tests.test_policy_fixtures import CONSUMER, World, context

    meter = Meter("sentinel-gw", tmp_path, ha.url)
    meter.open()
    ctx = context(World().snapshot(), role="home", gateway="sentinel-gw")
    ctx.client, ctx.status, ctx.consumer_gateway = CONSUMER, 200, "sentinel-gw"
    for _ in range(7):
        meter.log(ctx)
    meter.flush_once()
    primary = redis.Redis(port=ha.master_port())
    counted = sum(int(v) for key in primary.keys("meter:h:*") for v in primary.hvals(key))
    assert counted == 7
