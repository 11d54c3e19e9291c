"""The gateways of bench/revocation.py, several to a client process (100 processes on 2 cores would measure the
scheduler, not the registry).

A process holds ONE real Snapshot, its first gateway's: built from a full snapshot fetched over HTTPS and verified (a
cold start, timed). Its other gateways take that version as the one they hold (how they came by it is not what is
measured) and keep no Snapshot, to spare the memory of one per gateway. For each round the parent names the gateways
that take part; each parks one long poll (`?wait=30`, If-None-Match, its own gateway token, its own connection) and
times its answer when it arrives and once open_envelope has verified both signatures. The process's Snapshot applies
the delta for its own gateway (timed, `apply_s`), and the result is checked: the revoked grant is gone from it.
"""

from __future__ import annotations

import asyncio
import resource
import time
from dataclasses import dataclass
from multiprocessing.queues import Queue
from pathlib import Path
from typing import Any

import httpx

from lienthong import keys, pki, tokens
from lienthong.keys import PrivateKey, PublicKey
from lienthong.snapshot import Snapshot
from lienthong.snapshot_wire import open_envelope


@dataclass(frozen=True)
class Setup:
    base: str  # the registry's https URL
    ca: str  # the mesh CA file
    registry_jwk: dict[str, Any]
    key_dir: str  # <code>.key for every gateway
    codes: tuple[str, ...]  # this process's gateways; the first holds the Snapshot


def key_path(key_dir: Path | str, code: str) -> Path:
    return Path(key_dir) / f"{code}.key"


def auth(code: str, key: PrivateKey) -> dict[str, str]:
    """A gateway's bearer token for the registry, as gateway/snapshot_client.py sends it."""
    claims = {"iss": f"gateway:{code}", "sub": f"gateway:{code}", "aud": "registry"}
    return {"Authorization": "Bearer " + tokens.sign(key, keys.public_jwk(key)["kid"], claims, lifetime=300)}


async def cold_start(
    http: httpx.AsyncClient, base: str, code: str, key: PrivateKey, registry_key: PublicKey
) -> tuple[Snapshot, dict[str, float]]:
    """A gateway starting with nothing: the full snapshot over HTTPS, verified, then indexed. Wall seconds."""
    started = time.perf_counter()
    r = await http.get(f"{base}/v1/snapshot", headers=auth(code, key), timeout=300)
    r.raise_for_status()
    fetched = time.perf_counter()
    opened = open_envelope(r.content, registry_key, code)
    verified = time.perf_counter()
    snapshot = Snapshot(opened.doc)
    built = time.perf_counter()
    return snapshot, {
        "fetch_s": fetched - started, "verify_s": verified - fetched, "build_s": built - verified,
        "total_s": built - started, "full_mb": len(r.content) / 1e6, "quarantined": float(len(snapshot.quarantined)),
    }  # fmt: skip


def _revoked(doc: dict[str, Any]) -> list[str]:
    """The grants a delta brings as revoked."""
    grants = doc.get("changes", {}).get("grants", {})
    return sorted(i for i, g in grants.items() if isinstance(g, dict) and g.get("revoked"))


def _holds(snapshot: Snapshot, grant: dict[str, Any]) -> bool:
    return any(g.id == grant["id"] for g in snapshot.grants.get((grant["consumer"], grant["service"]), ()))


class Gateways:
    """One client process: its gateways, their keys, and the one Snapshot it keeps."""

    def __init__(self, setup: Setup, out: Queue[Any]) -> None:
        self.setup, self.out = setup, out
        self.registry_key = keys.public_key_from_jwk(setup.registry_jwk)
        self.keys = {code: keys.load_private(key_path(setup.key_dir, code)) for code in setup.codes}
        self.snapshot: Snapshot | None = None

    async def poll(self, http: httpx.AsyncClient, code: str, held: int) -> None:
        headers = {**auth(code, self.keys[code]), "If-None-Match": f'"{held}"'}
        r = await http.get(f"{self.setup.base}/v1/snapshot", params={"wait": 30}, headers=headers, timeout=60)
        received = time.monotonic()
        if r.status_code != 200:
            raise RuntimeError(f"gateway {code}: HTTP {r.status_code} to its long poll")
        opened = open_envelope(r.content, self.registry_key, code)
        report: dict[str, Any] = {
            "code": code, "received": received, "verified": time.monotonic(), "bytes": len(r.content),
            "kind": opened.kind, "version": opened.version, "revoked": _revoked(opened.doc),
        }  # fmt: skip
        snapshot = self.snapshot
        if code == self.setup.codes[0] and snapshot is not None:
            grants = opened.doc["changes"]["grants"]
            before = [g for g in grants.values() if g and _holds(snapshot, g)]
            applied = snapshot.apply(opened.doc)
            report["applied"] = time.monotonic()
            report["apply_s"] = report["applied"] - report["verified"]
            report["gone"] = bool(before) and not any(_holds(applied, g) for g in before)
            self.snapshot = applied
        self.out.put(("got", report))

    async def run(self, inbox: Queue[Any]) -> None:
        ctx = pki.client_context(Path(self.setup.ca))
        limits = httpx.Limits(max_connections=len(self.setup.codes) + 2, max_keepalive_connections=None)

        async def sent(request: httpx.Request) -> None:
            self.out.put(("sent", request.headers.get("if-none-match")))

        async with httpx.AsyncClient(verify=ctx, limits=limits, event_hooks={"request": [sent]}) as http:
            holder = self.setup.codes[0]
            self.snapshot, cold = await cold_start(http, self.setup.base, holder, self.keys[holder], self.registry_key)
            rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            self.out.put(("ready", {"version": self.snapshot.version, "rss_mb": rss_mb, **cold}))
            while True:
                message = await asyncio.to_thread(inbox.get)
                if message[0] == "stop":
                    return
                _round, codes, held = message
                await asyncio.gather(*(self.poll(http, code, held) for code in self.setup.codes if code in codes))


def main(setup: Setup, inbox: Queue[Any], out: Queue[Any]) -> None:
    """A client process's entry point (multiprocessing, spawn); any failure is reported, not swallowed."""
    try:
        asyncio.run(Gateways(setup, out).run(inbox))
    except BaseException as exc:
        out.put(("error", f"{type(exc).__name__}: {exc}"))
        raise
