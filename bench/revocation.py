"""One grant revocation at national scale (issue 17): what it costs the registry, how big the delta is, and how soon
100 long-polling gateways hold it, verified and applied; and a gateway's cold start at that size.

For each size (services, ten grants per service) a real registry process runs on its own Redis over HTTPS; every
gateway is registered through the API with a key of its own, the rest of the world is bulk-loaded
(bench/registry_snapshot.py's). Then:

- cold start: one gateway fetches the full snapshot over HTTPS, verifies it (open_envelope) and builds its Snapshot,
  alone on the machine (wall seconds);
- (a) the change and its delta, with no gateway waiting: a grant revoked through the API, then one delta from the
  version before, signed for one gateway; the registry process's CPU for each (its threads' schedstat), three times;
- (b) per number of gateways G: G long polls are parked (their own CPU is `park_cpu_ms`), a grant is revoked through
  the API, and the registry's CPU is read from before the revocation until every gateway has its delta: the change,
  the delta, and G answers over TLS. Each gateway's delay runs from the start of the revoke call to its delta
  verified, plus the apply time its process measured (bench/revocation_clients.py: one real Snapshot per process).
"""

from __future__ import annotations

import asyncio
import itertools
import math
import multiprocessing as mp
import queue
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import redis

from bench import registry_snapshot
from bench.revocation_clients import Setup, cold_start, key_path
from lienthong import keys, pki
from lienthong.redis_connection import EmbeddedRedis, free_port
from registry.client import RegistryClient
from registry.keyfiles import signing_public_jwk

GRANTS_PER_SERVICE = 10
REPEATS = 3  # of the change-and-delta measurement (a)


@dataclass
class Registry:
    base: str
    work: Path
    pid: int
    redis_pid: int
    redis_url: str
    admin: RegistryClient

    @property
    def ca(self) -> Path:
        return self.work / "registry" / "ca.crt"

    def cpu_ms(self) -> float:
        return cpu_seconds(self.pid) * 1000

    def redis_connections(self) -> int:
        """Connections Redis has accepted so far: the registry's pool opening new ones shows here."""
        client = redis.Redis.from_url(self.redis_url)
        try:
            return int(client.info("stats")["total_connections_received"])
        finally:
            client.close()

    def version(self, gateway: str) -> int:
        r = self.admin.snapshot(gateway=gateway, held=2**62)  # 304 with the current version as ETag
        return int(r.headers["etag"].strip('"'))


def cpu_seconds(pid: int) -> float:
    """CPU time of a process's live threads in ns precision (schedstat); /proc/<pid>/stat ticks (10 ms) without it."""
    total, found = 0, False
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
            found = True
        except (OSError, ValueError, IndexError):
            continue
    if found:
        return total / 1e9
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100  # utime + stime, in clock ticks of 1/100 s


@contextmanager
def registry_up(work: Path, redis_pool: int = 0) -> Iterator[Registry]:
    """`lienthong registry init` + `serve` on a throw-away Redis, with its admin client; `redis_pool` > 0 sets the
    registry's Redis pool size (`?max_connections=` in its URL), else redis-py's default (100 in redis-py 8)."""
    exe = Path(sys.executable).parent / "lienthong"
    data = work / "registry"
    log = (work / "registry.log").open("wb")
    subprocess.run([str(exe), "registry", "init", "--data-dir", str(data)], check=True, capture_output=True)
    server = EmbeddedRedis(work / "redis", durable=False)
    url, port = server.start(), free_port()
    pool = f"{url}?max_connections={redis_pool}" if redis_pool else url
    proc = subprocess.Popen(
        [str(exe), "registry", "serve", "--port", str(port), "--data-dir", str(data), "--redis-url", pool,
         "--upstream-allow", "10.0.0.0/8:8080"],  # the world's upstreams, never called
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    base = f"https://127.0.0.1:{port}"
    admin = RegistryClient(base, data / "admin.key", ca=data / "ca.crt")
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=1, verify=pki.client_context(data / "ca.crt")).is_success:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("the registry did not start")
            time.sleep(0.1)
        assert server.process is not None
        yield Registry(base, work, proc.pid, server.process.pid, url, admin)
    except Exception as exc:  # say what the registry logged: a 503 alone does not say why
        tail = (work / "registry.log").read_text(errors="replace").strip().splitlines()[-5:]
        raise RuntimeError(f"{type(exc).__name__}: {exc}; the registry's log ends: {' | '.join(tail)}") from exc
    finally:
        log.close()
        admin.close()
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        server.stop()


def populate(reg: Registry, services: int, gateways: int) -> list[str]:
    """Gateways through the API (their keys are what their tokens are checked against), the rest bulk-loaded."""
    key_dir = reg.work / "gateway-keys"
    key_dir.mkdir()
    codes = [registry_snapshot.gateway_code(g) for g in range(gateways)]
    for g, code in enumerate(codes):
        key = keys.generate()
        keys.save_private(key, key_path(key_dir, code))
        reg.admin.add_gateway(code, f"https://10.0.{g // 250}.{g % 250}:8700", [keys.public_jwk(key)])
    asyncio.run(registry_snapshot.seed(reg.redis_url, services, services * GRANTS_PER_SERVICE, gateways, ("gateways",)))
    return codes


def measure_cold_start(reg: Registry, code: str) -> dict[str, float]:
    key = keys.load_private(key_path(reg.work / "gateway-keys", code))
    registry_key = keys.public_key_from_jwk(signing_public_jwk(reg.work / "registry"))

    async def once() -> dict[str, float]:
        async with httpx.AsyncClient(verify=pki.client_context(reg.ca)) as http:
            _snapshot, figures = await cold_start(http, reg.base, code, key, registry_key)
            return figures

    return asyncio.run(once())


def measure_change(reg: Registry, gateway: str, grants: Iterator[str]) -> dict[str, float]:
    """(a): the registry's CPU for a revocation through the API, then for the first delta it makes (one gateway)."""
    idle = reg.cpu_ms()
    time.sleep(1.0)
    idle = reg.cpu_ms() - idle
    out: dict[str, list[float]] = {"change_cpu_ms": [], "delta_cpu_ms": [], "change_wall_ms": [], "delta_bytes": []}
    for _ in range(REPEATS):
        held = reg.version(gateway)
        before, wall = reg.cpu_ms(), time.perf_counter()
        reg.admin.revoke_grant(next(grants))
        changed, wall = reg.cpu_ms(), time.perf_counter() - wall
        r = reg.admin.snapshot(gateway=gateway, held=held)
        if r.headers.get("x-snapshot-kind") != "delta":
            raise RuntimeError(f"the registry answered a {r.headers.get('x-snapshot-kind')} snapshot, not a delta")
        out["change_cpu_ms"].append(changed - before)
        out["delta_cpu_ms"].append(reg.cpu_ms() - changed)
        out["change_wall_ms"].append(wall * 1000)
        out["delta_bytes"].append(len(r.content))
    figures = {k: round(statistics.median(v), 3) for k, v in out.items()}
    figures["idle_cpu_ms_per_s"] = round(idle, 3)  # the registry's background work, for scale
    return figures


class Clients:
    """The gateways' client processes (bench/revocation_clients.py), each with its share of the gateways."""

    def __init__(self, reg: Registry, codes: list[str], processes: int) -> None:
        self.ctx = mp.get_context("spawn")  # a fresh interpreter: no Redis or HTTP state of the parent's
        self.out: Any = self.ctx.Queue()
        self.inboxes: list[Any] = []
        self.procs: list[Any] = []
        jwk = signing_public_jwk(reg.work / "registry")
        from bench import revocation_clients

        for p in range(min(processes, len(codes))):
            setup = Setup(reg.base, str(reg.ca), jwk, str(reg.work / "gateway-keys"), tuple(codes[p::processes]))
            inbox = self.ctx.Queue()
            proc = self.ctx.Process(target=revocation_clients.main, args=(setup, inbox, self.out), daemon=True)
            proc.start()
            self.inboxes.append(inbox)
            self.procs.append(proc)

    def take(self, kind: str, count: int, timeout: float) -> list[Any]:
        """The next `count` messages of `kind`; a client's error or the time limit raises."""
        got: list[Any] = []
        deadline = time.monotonic() + timeout
        while len(got) < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RuntimeError(f"{len(got)} of {count} gateways reported '{kind}' within {timeout:g} s")
            try:
                message = self.out.get(timeout=min(remaining, 1.0))
            except queue.Empty:
                dead = [p.exitcode for p in self.procs if p.exitcode not in (None, 0)]
                if dead:
                    raise RuntimeError(f"a client process exited with {dead[0]} before reporting '{kind}'") from None
                continue
            if message[0] == "error":
                raise RuntimeError(f"a client process failed: {message[1]}")
            if message[0] == kind and (kind != "sent" or message[1] is not None):
                got.append(message[1])
        return got

    def start_round(self, codes: list[str], held: int) -> None:
        for inbox in self.inboxes:
            inbox.put(("round", codes, held))

    def close(self) -> None:
        for inbox in self.inboxes:
            inbox.put(("stop",))
        for proc in self.procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()


def _pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile: of 100 values, p99 is the 99th."""
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, math.ceil(len(ordered) * q / 100) - 1))]


def settle(reg: Registry, idle_ms_per_s: float, least: float = 1.0, most: float = 60.0) -> None:
    """Wait until the registry has spent no more than its idle CPU (plus 1 ms) over a quarter of a second."""
    started = time.monotonic()
    while time.monotonic() - started < most:
        before = reg.cpu_ms()
        time.sleep(0.25)
        if reg.cpu_ms() - before <= idle_ms_per_s / 4 + 1.0 and time.monotonic() - started >= least:
            return
    raise RuntimeError(f"the registry was still busy {most:g} s after the gateways' long polls were sent")


def measure_round(
    reg: Registry, clients: Clients, codes: list[str], held: int, grant: str, idle_ms_per_s: float
) -> dict[str, float]:
    """(b): len(codes) parked long polls, one revocation, and every gateway's delta verified (and applied once per
    client process); the registry's CPU from before the revoke call until the last gateway holds the delta."""
    started, wall = reg.cpu_ms(), time.monotonic()
    clients.start_round(codes, held)
    clients.take("sent", len(codes), 120)
    settle(reg, idle_ms_per_s)  # every request is authenticated and parked: the registry is idle again
    connections = reg.redis_connections()
    parked, redis_before = reg.cpu_ms(), cpu_seconds(reg.redis_pid)
    park_ms = parked - started - idle_ms_per_s * (time.monotonic() - wall)  # less what it spends idle meanwhile
    t0 = time.monotonic()
    reg.admin.revoke_grant(grant)
    revoke_ms = (time.monotonic() - t0) * 1000
    got: list[dict[str, Any]] = clients.take("got", len(codes), 120)
    total = reg.cpu_ms() - parked
    redis_ms = (cpu_seconds(reg.redis_pid) - redis_before) * 1000
    connections = reg.redis_connections() - connections - 1  # less the second count's own
    if any(g["kind"] != "delta" or g["revoked"] != [grant] for g in got):
        raise RuntimeError(f"a gateway did not get the delta revoking {grant} alone: {got[0]}")
    applies = [g for g in got if "apply_s" in g]
    if not applies or not all(g["gone"] for g in applies):
        raise RuntimeError("a client process's Snapshot still holds the revoked grant after applying the delta")
    apply_s = statistics.median(g["apply_s"] for g in applies)
    ms = [(g["received"] - t0) * 1000 for g in got]
    verified = [(g["verified"] - t0) * 1000 for g in got]
    delays = [v + apply_s * 1000 for v in verified]  # as if each gateway applied on its own CPU
    g_count = len(codes)
    return {
        "gateways": g_count,
        "park_cpu_ms_per_gateway": round(park_ms / g_count, 3),  # with a TLS handshake where a connection is new
        "total_cpu_ms": round(total, 2),
        "redis_cpu_ms": round(redis_ms, 2),
        "redis_new_connections": connections,  # opened by the registry for this one change
        "revoke_call_ms": round(revoke_ms, 2),
        "delta_bytes": max(g["bytes"] for g in got),
        "apply_ms": round(apply_s * 1000, 2),
        "received_p50_ms": round(_pct(ms, 50), 2),
        "received_p99_ms": round(_pct(ms, 99), 2),
        "delay_p50_ms": round(_pct(delays, 50), 2),
        "delay_p99_ms": round(_pct(delays, 99), 2),
        "delay_max_ms": round(max(delays), 2),
        "applied_max_ms": round(max((g["applied"] - t0) * 1000 for g in applies), 2),  # observed, the holders
        "version": max(g["version"] for g in got),
    }


def measure_size(
    services: int, gateway_counts: list[int], processes: int, work: Path, redis_pool: int
) -> dict[str, Any]:
    """Every figure at one size: cold start, (a), then (b) for each number of gateways."""
    out: dict[str, Any] = {"grants": services * GRANTS_PER_SERVICE}
    with registry_up(work, redis_pool) as reg:
        codes = populate(reg, services, max(gateway_counts))
        grants = (registry_snapshot.grant_id(n) for n in itertools.count())
        out["cold_start"] = measure_cold_start(reg, codes[0])
        out["change"] = measure_change(reg, codes[0], grants)
        clients = Clients(reg, codes, processes)
        try:
            ready = clients.take("ready", len(clients.procs), 900)
            held = reg.version(codes[0])
            if any(r["version"] != held for r in ready):
                raise RuntimeError(f"a client process holds another version than {held}: {ready}")
            out["clients"] = {
                "processes": len(clients.procs),
                "cold_start_max_s": round(max(r["total_s"] for r in ready), 3),  # all at once, sharing the cores
                "rss_max_mb": round(max(r["rss_mb"] for r in ready), 1),
            }
            for count in sorted(gateway_counts):
                idle = out["change"]["idle_cpu_ms_per_s"]
                figures = measure_round(reg, clients, codes[:count], held, next(grants), idle)
                held = int(figures.pop("version"))
                out[f"g{count}"] = figures
        finally:
            clients.close()
    return out


# the headline figures and their targets (None: no target)
TARGETS: dict[str, float | None] = {
    "change_delta_cpu_ms": 50.0, "total_cpu_ms": 50.0, "serve_cpu_ms_per_gateway": None, "delta_bytes": 2048.0,
    "delay_p99_ms": 1000.0, "cold_start_s": 5.0,
}  # fmt: skip


def headline(size: dict[str, Any], count: int, fewer: int | None) -> dict[str, float]:
    """The headline figures of one size at `count` gateways (and the per-gateway slope against `fewer`)."""
    at = size[f"g{count}"]
    out = {
        "change_delta_cpu_ms": round(size["change"]["change_cpu_ms"] + size["change"]["delta_cpu_ms"], 3),
        "total_cpu_ms": at["total_cpu_ms"],
        "serve_cpu_ms_per_gateway": round(at["total_cpu_ms"] / count, 3),
        "delta_bytes": at["delta_bytes"],
        "delay_p99_ms": at["delay_p99_ms"],
        "cold_start_s": round(size["cold_start"]["total_s"], 3),
    }
    if fewer is not None and fewer < count:  # what each further gateway costs, from the two rounds
        out["serve_cpu_ms_per_gateway"] = round(
            (at["total_cpu_ms"] - size[f"g{fewer}"]["total_cpu_ms"]) / (count - fewer), 3
        )
    return out


def run(
    services: int = 10_000, gateways: int = 100, steps: int = 2, processes: int = 4, redis_pool: int = 1000
) -> dict[str, Any]:
    """Measure at `services` services (ten grants each) and `gateways` gateways, and at a tenth, a hundredth, ...
    of each for `steps` > 1; `processes` client processes share the gateways. With redis-py's default pool of 100
    connections (`redis_pool=0`) the registry answers 503 "Too many connections" when 100 long polls wake at once,
    so the run gives it a larger pool by default."""
    sizes = [services // 10**k for k in reversed(range(steps))]
    counts = [gateways // 10**k for k in reversed(range(steps))]
    if min(sizes) < 1 or min(counts) < 1:
        raise ValueError("steps too many for these sizes")
    out: dict[str, Any] = {"services": services, "grants": services * GRANTS_PER_SERVICE, "gateways": gateways,
                           "processes": min(processes, gateways), "redis_pool": redis_pool}  # fmt: skip
    for size in sizes:
        with tempfile.TemporaryDirectory(prefix="revocation-") as tmp:
            out[f"s{size}"] = measure_size(size, counts, processes, Path(tmp), redis_pool)
    fewer = counts[-2] if len(counts) > 1 else None
    top = headline(out[f"s{services}"], gateways, fewer)
    out.update(top)
    out["meets"] = {k: top[k] < t for k, t in TARGETS.items() if t is not None}
    if steps > 1:  # how each figure grows with ten times the services, and with ten times the gateways
        smaller = headline(out[f"s{sizes[-2]}"], gateways, fewer)
        less = headline(out[f"s{services}"], counts[-2], None)
        out["x10_services"] = {k: round(v / smaller[k], 2) if smaller[k] else None for k, v in top.items()}
        out["x10_gateways"] = {k: round(v / less[k], 2) if less[k] else None for k, v in top.items()
                               if k != "serve_cpu_ms_per_gateway"}  # fmt: skip
    return out


if __name__ == "__main__":
    import json

    print(json.dumps(run(**{k: int(v) for k, v in (a.split("=") for a in sys.argv[1:])}), indent=2))
