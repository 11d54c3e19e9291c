"""Revocation reaching 35 gateways: the delay from a grant's revocation in the registry to the moment every gateway
holds a verified snapshot without it.

A real registry process on a real Redis, over HTTPS verified with the mesh CA; 35 gateways registered with keys of
their own. The gateways are asyncio long-poll clients in this one process (35 processes would measure the machine's
scheduler more than the registry): each asks with its own gateway token over TLS, waits on `?wait=30` with
If-None-Match, and verifies the JWS against the registry key before it counts a version as held, as a gateway does.
"""

from __future__ import annotations

import asyncio
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from lienthong import keys, pki, tokens
from lienthong.keys import PublicKey
from lienthong.redis_connection import EmbeddedRedis, free_port
from lienthong.snapshot import verify_jws


class Poller:
    """One gateway's long poll: holds the newest verified version and when it arrived."""

    def __init__(self, base: str, code: str, key: keys.PrivateKey, registry_key: PublicKey) -> None:
        self.base, self.code, self.key, self.registry_key = base, code, key, registry_key
        self.kid = keys.public_jwk(key)["kid"]
        self.version = 0
        self.grants_revoked: set[str] = set()
        self.arrived: dict[int, float] = {}

    async def loop(self, http: httpx.AsyncClient, stop: asyncio.Event) -> None:
        while not stop.is_set():
            claims = {"iss": f"gateway:{self.code}", "sub": f"gateway:{self.code}", "aud": "registry"}
            token = tokens.sign(self.key, self.kid, claims, lifetime=120)
            headers = {"Authorization": f"Bearer {token}"}
            if self.version:
                headers["If-None-Match"] = f'"{self.version}"'
            try:
                r = await http.get(f"{self.base}/v1/snapshot", params={"wait": 30}, headers=headers, timeout=40)
            except httpx.HTTPError:
                await asyncio.sleep(0.05)
                continue
            if r.status_code == 200:
                doc = verify_jws(r.content, self.registry_key)
                self.version = int(doc["version"])
                self.grants_revoked = {g["id"] for g in doc.get("grants", []) if g.get("revoked")}
                self.arrived[self.version] = time.perf_counter()


def _ca(work: Path) -> Path:
    """The mesh CA `lienthong registry init` made: the registry's HTTPS certificate is verified with it."""
    return work / "registry" / "ca.crt"


def _verify(work: Path) -> ssl.SSLContext:
    return pki.client_context(_ca(work))


def _start_registry(work: Path, redis_url: str) -> tuple[subprocess.Popen[bytes], str]:
    exe = Path(sys.executable).parent / "lienthong"
    subprocess.run([str(exe), "registry", "init", "--data-dir", str(work / "registry")], check=True,
                   capture_output=True)  # fmt: skip
    port = free_port()
    proc = subprocess.Popen(
        [str(exe), "registry", "serve", "--port", str(port), "--data-dir", str(work / "registry"),
         "--redis-url", redis_url, "--upstream-allow", "127.0.0.1:9"],  # the service's never-called upstream
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    base = f"https://127.0.0.1:{port}"
    verify = _verify(work)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/healthz", timeout=1, verify=verify).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError("the registry did not start")


async def _measure(base: str, work: Path, gateways: int) -> dict[str, Any]:
    from registry.client import RegistryClient
    from registry.keyfiles import signing_public_jwk

    registry_key = keys.public_key_from_jwk(signing_public_jwk(work / "registry"))
    admin = RegistryClient(base, work / "registry" / "admin.key", ca=_ca(work))
    pollers = []
    for i in range(gateways):
        key = keys.generate()
        code = f"gw{i:02d}"
        admin.add_gateway(code, f"https://127.0.0.1:{20000 + i}", [keys.public_jwk(key)])
        pollers.append(Poller(base, code, key, registry_key))
    admin.add_member("VN/GOV/BENCH", "Benchmark ministry", "gw00")
    admin.add_subsystem("VN/GOV/BENCH/data", "Benchmark data")
    doc = {"openapi": "3.0.3", "info": {"title": "bench", "version": "v1"},
           "paths": {"/x": {"get": {"responses": {"200": {"description": "ok"}}}}}}  # fmt: skip
    admin.register_service("VN/GOV/BENCH/data/x", openapi=doc, gateway="gw00", upstream_url="https://127.0.0.1:9",
                           name="x")  # fmt: skip
    admin.approve_service("VN/GOV/BENCH/data/x")
    grant = admin.add_grant("VN/GOV/BENCH/data", "VN/GOV/BENCH/data/x", ["bench"])
    current = int(admin.snapshot(gateway="gw00").headers["etag"].strip('"'))
    stop = asyncio.Event()
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=gateways + 5), verify=_verify(work)) as http:
        tasks = [asyncio.create_task(p.loop(http, stop)) for p in pollers]
        deadline = time.monotonic() + 60
        while min(p.version for p in pollers) < current:
            if time.monotonic() > deadline:
                raise RuntimeError("the gateways never all held the starting snapshot")
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)  # every poller is parked in its long poll again
        started = time.perf_counter()
        await asyncio.to_thread(admin.revoke_grant, grant["id"])
        revoked_at = time.perf_counter()
        while not all(grant["id"] in p.grants_revoked for p in pollers):
            if time.perf_counter() - started > 30:
                raise RuntimeError("the revocation did not reach every gateway within 30 s")
            await asyncio.sleep(0.005)
        stop.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    admin.close()
    delays = sorted((max(p.arrived.values()) - started) * 1000 for p in pollers)
    return {
        "gateways": gateways,
        "revoke_call_ms": round((revoked_at - started) * 1000, 2),
        "delay_p50_ms": round(statistics.median(delays), 2),
        "delay_max_ms": round(delays[-1], 2),
        "delay_mean_ms": round(statistics.fmean(delays), 2),
    }


def run(gateways: int = 35) -> dict[str, Any]:
    """Figures in ms, measured from the start of the revoke call."""
    with tempfile.TemporaryDirectory(prefix="revocation-") as tmp:
        work = Path(tmp)
        redis = EmbeddedRedis(work / "redis", durable=False)
        proc, base = _start_registry(work, redis.start())
        try:
            return asyncio.run(_measure(base, work, gateways))
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
            redis.stop()


if __name__ == "__main__":
    print(run())
