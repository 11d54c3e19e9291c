"""Quota and meter on a real Redis Cluster (issue 17): three redis-server processes in cluster mode, no replicas,
joined by `redis-cli --cluster create`, started and killed here. Every key one Lua script touches must hash to one
slot (the server's CLUSTER KEYSLOT says so), a quota limit holds exactly across two workers, and the meter's counts
are exact after a flush and a replay, read back through policies.meter_query as the operations API reads them."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
import redis

from lienthong.problem import Problem
from lienthong.redis_connection import DeferredClient, free_port, redis_executable, sync_client
from policies.meter import Meter
from policies.meter_query import MESH_ROLES, timeseries, transactions
from policies.meter_store import SpoolApplier
from policies.quota import Quota, quota_keys
from tests.test_policy_fixtures import CONSUMER, World, context
from tests.test_policy_quota import away_from_a_minute_edge  # noqa: F401  (autouse: a fixture in this module too)

BUS_OFFSET = 10000  # a cluster node also listens on its port + 10000 (the cluster bus)


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def cluster_ports(n: int) -> list[int]:
    """Free ports whose cluster bus port is free too."""
    ports: list[int] = []
    while len(ports) < n:
        port = free_port()
        if port + BUS_OFFSET < 65536 and port not in ports and _bindable(port + BUS_OFFSET):
            ports.append(port)
    return ports


class ClusterProcesses:
    """Three masters on `ports`, data and logs under `base`; stop() kills them."""

    def __init__(self, base: Path, ports: list[int]) -> None:
        self.base, self.ports = base, ports
        self.processes: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.ports)

    def start(self) -> ClusterProcesses:
        for port in self.ports:
            folder = (self.base / f"node-{port}").resolve()
            folder.mkdir(parents=True, exist_ok=True)
            self.processes.append(subprocess.Popen([
                redis_executable(), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder),
                "--cluster-enabled", "yes", "--cluster-config-file", str(folder / f"nodes-{port}.conf"),
                "--save", "", "--appendonly", "no", "--logfile", str(folder / "redis.log"),
            ], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))  # fmt: skip
        nodes = [redis.Redis(port=p, socket_timeout=2, decode_responses=True) for p in self.ports]
        _until("every node to answer", lambda: all(_pings(n) for n in nodes))
        cli = str(Path(redis_executable()).with_name("redis-cli"))
        create = subprocess.run(
            [cli, "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports), "--cluster-replicas", "0",
             "--cluster-yes"], capture_output=True, timeout=120,
        )  # fmt: skip
        assert create.returncode == 0, create.stdout.decode(errors="replace")[-2000:]
        _until("cluster_state:ok on every node", lambda: all(n.cluster("INFO")["cluster_state"] == "ok" for n in nodes))
        for n in nodes:
            n.close()
        return self

    def stop(self) -> None:
        for process in self.processes:
            process.kill()
            process.wait(10)
        self.processes.clear()


def _pings(node: redis.Redis) -> bool:
    try:
        return bool(node.ping())
    except redis.RedisError:
        return False


def _until(what: str, check: object, timeout: float = 60.0) -> None:
    """Poll `check` until true; the bound only catches a hang."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():  # type: ignore[operator]
                return
        except redis.RedisError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterProcesses]:
    procs = ClusterProcesses(tmp_path_factory.mktemp("cluster"), cluster_ports(3))
    try:
        yield procs.start()
    finally:
        procs.stop()


@pytest.fixture
def client(cluster: ClusterProcesses) -> Iterator[redis.RedisCluster]:
    """A cluster client with every master emptied first."""
    made = sync_client(cluster.url)
    assert isinstance(made, redis.RedisCluster)
    made.flushall(target_nodes=redis.RedisCluster.PRIMARIES)
    yield made
    made.close()


def keyslots(client: redis.RedisCluster, keys: list[str]) -> set[int]:
    """The slots the server itself computes for keys (CLUSTER KEYSLOT), not redis-py's own hashing."""
    return {int(client.execute_command("CLUSTER KEYSLOT", key, target_nodes=client.get_random_node())) for key in keys}


def spool_line(t: float, consumer: str, gateway: str) -> bytes:
    return orjson.dumps({"t": t, "c": consumer, "s": "S", "e": "GET /p", "cg": gateway, "pg": "national",
                         "r": "home", "o": "2xx", "ms": 3.0}) + b"\n"  # fmt: skip


def test_the_keys_of_one_script_share_one_slot(cluster: ClusterProcesses, client: redis.RedisCluster) -> None:
    minute, day = int(time.time() // 60), int(time.time() // 86400)
    assert len(keyslots(client, list(quota_keys("g-0123456789abcdef", minute, day)))) == 1
    # a meter batch over two hours and two minutes: its watermark and all eight hashes it increments
    t0 = datetime(2025, 12, 1, 8, 59, 30, tzinfo=UTC).timestamp()
    lines = [spool_line(t0, "A", "hanoi"), spool_line(t0 + 60, "B", "hanoi")]
    for gateway in ("hanoi", "nghean", "national"):
        keys, _ = SpoolApplier(DeferredClient(cluster.url), gateway).script_call("f1", 0, 99, lines)
        assert len(keys) == 1 + 8
        assert len(keyslots(client, keys)) == 1, keys


def test_a_quota_limit_holds_exactly_across_two_workers(cluster: ClusterProcesses, client: redis.RedisCluster) -> None:
    workers = [Quota(cluster.url), Quota(cluster.url)]
    snap = World(quota={"per_minute": 50, "per_day": 1000}).snapshot()
    grant = snap.grants[("VN/PROV/NGHEAN/civil-status", "VN/GOV/BCA/population/persons")][0]
    admitted, refused = 0, 0
    for i in range(80):
        ctx = context(snap, role="home")
        ctx.grant = grant
        try:
            workers[i % 2].access(ctx)
            admitted += 1
        except Problem as problem:
            assert problem.status == 429 and problem.code == "quota-exceeded"
            refused += 1
    assert (admitted, refused) == (50, 30)
    minute_key, day_key = quota_keys(grant.id, int(time.time() // 60), int(time.time() // 86400))
    assert int(client.get(minute_key) or 0) == 50 and int(client.get(day_key) or 0) == 50
    assert sum(w.leases for w in workers) >= 2  # both went to the cluster, neither admitted on an outage allowance


def test_unspent_leases_go_back_to_the_cluster_at_stop(cluster: ClusterProcesses, client: redis.RedisCluster) -> None:
    workers = [Quota(cluster.url), Quota(cluster.url)]
    snap = World(quota={"per_minute": 100000, "per_day": 1000000}).snapshot()
    grant = snap.grants[("VN/PROV/NGHEAN/civil-status", "VN/GOV/BCA/population/persons")][0]
    for i in range(30):
        ctx = context(snap, role="home")
        ctx.grant = grant
        workers[i % 2].access(ctx)
    minute_key, _ = quota_keys(grant.id, int(time.time() // 60), int(time.time() // 86400))
    for worker in workers:
        asyncio.run(worker.stop())
    assert int(client.get(minute_key) or 0) == 30  # what was leased and not spent is given back


def test_meter_counts_are_exact_on_the_cluster(cluster: ClusterProcesses, client: redis.RedisCluster,
                                               tmp_path: Path) -> None:  # fmt: skip
    """Two gateways (two tags, likely two nodes) count 120 and 80 calls; the readers add both up, and a replay of the
    same spools counts nothing twice."""
    snap = World().snapshot()
    meters = {gw: Meter(gw, tmp_path / gw, cluster.url) for gw in ("hanoi", "nghean")}
    for gw, n in (("hanoi", 120), ("nghean", 80)):
        meter = meters[gw]
        meter.open()
        ctx = context(snap, role="home", gateway=gw)
        ctx.client, ctx.status, ctx.consumer_gateway = CONSUMER, 200, gw
        for _ in range(n):
            meter.log(ctx)
        meter.flush_once()
    now = datetime.now(UTC)
    window = (now - timedelta(hours=1), now + timedelta(hours=1))
    counted = transactions(client, *window, ["consumer_gateway"], MESH_ROLES)
    assert counted["total"] == 200
    assert {g["consumer_gateway"]: g["count"] for g in counted["groups"]} == {"hanoi": 120, "nghean": 80}
    for meter in meters.values():  # the same batches again: the watermark on their slot refuses them
        assert meter._path is not None
        meter.applier.apply_from(meter._path, 0)
    assert transactions(client, *window, [], MESH_ROLES)["total"] == 200
    assert timeseries(client, "hour", "gateway", now)["total"] == 200  # the per-minute hashes too
    for meter in meters.values():
        asyncio.run(meter.stop())


def test_a_gateway_started_before_its_cluster_spools_then_counts(tmp_path: Path) -> None:
    """redis-py's cluster client reads the slot map when it is made; quota and meter must start without it, fail
    open within the outage allowance, and count everything once the cluster is there."""
    procs = ClusterProcesses(tmp_path / "late", cluster_ports(3))
    snap = World(quota={"per_minute": 30, "per_day": 1000}).snapshot()
    grant = snap.grants[("VN/PROV/NGHEAN/civil-status", "VN/GOV/BCA/population/persons")][0]

    async def scenario() -> None:
        quota = Quota(procs.url)  # nothing listens yet: no exception
        ctx = context(snap, role="home")
        ctx.grant = grant
        quota.access(ctx)  # within the outage allowance, max(1, 30 // 10) = 3
        meter = Meter("late", tmp_path / "gw", procs.url)
        await meter.start()
        ctx = context(snap, role="home", gateway="late")
        ctx.client, ctx.status, ctx.consumer_gateway = CONSUMER, 200, "late"
        for _ in range(40):
            meter.log(ctx)
        await asyncio.sleep(0.5)
        assert not meter.redis_ok
        await asyncio.to_thread(procs.start)
        client = sync_client(procs.url)
        now = datetime.now(UTC)

        def total() -> int:
            return int(transactions(client, now - timedelta(hours=1), now + timedelta(hours=1), [])["total"])

        await asyncio.to_thread(_until, "the spooled counts to reach the cluster", lambda: total() == 40)
        await meter.stop()
        assert total() == 40
        client.close()

    try:
        asyncio.run(scenario())
    finally:
        procs.stop()
