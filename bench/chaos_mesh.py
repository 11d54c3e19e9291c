"""The mesh the chaos run (and the attack and fuzz tests) work on: the demo mesh of lienthong.cli.mesh_up as real
processes with TLS on every link, on a durable Redis this module owns (so it can be stopped and started again), with
a fault proxy put between the national gateway and the insurance connector (its registered upstream URL points at the
proxy, a TCP proxy: the gateway's TLS handshake goes through it to the connector unchanged).

`shared(root)` starts one for the whole test process and stops it at exit, so the attack, chaos and fuzz test
modules pay the start-up (about 20 s on 2 cores) once.
"""

from __future__ import annotations

import atexit
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.chaos_load import Caller, Target
from bench.chaos_proxy import FaultProxy
from lienthong.cli import mesh_layout as layout
from lienthong.cli.mesh_up import Mesh, MeshConfig, start, wait_for_snapshot
from lienthong.redis_connection import EmbeddedRedis, free_port

PROXIED = layout.INSURANCE  # the service whose upstream goes through the fault proxy
PROXIED_TIMEOUT_MS = 1500  # short, so a hanging upstream trips the timeout (and then the breaker) quickly


@dataclass
class ChaosMesh:
    mesh: Mesh
    redis: EmbeddedRedis
    proxy: FaultProxy
    targets: list[Target]
    ids: dict[str, list[str]]  # connector name -> real keys in its database

    @property
    def root(self) -> Path:
        return self.mesh.config.root

    def key_file(self, subsystem: str) -> str:
        return str(self.mesh.config.paths.client_key(subsystem))

    def caller(self) -> Caller:
        subsystems = {t.consumer for t in self.targets}
        return Caller(self.mesh.gateway_urls, {s: self.key_file(s) for s in subsystems}, self.mesh.kids, self.ca)

    @property
    def ca(self) -> Path:
        """The mesh CA every https URL of this mesh is verified with."""
        assert self.mesh.ca is not None, "the chaos mesh runs TLS"
        return self.mesh.ca

    def gateway_dir(self, code: str) -> Path:
        return self.mesh.config.paths.gateway(code)

    def stop(self) -> None:
        self.mesh.stop()
        self.proxy.stop()
        self.redis.stop()


def _keys(database: Path, table: str, column: str, where: str = "", n: int = 3) -> list[str]:
    with sqlite3.connect(database) as conn:
        rows = conn.execute(f"SELECT {column} FROM {table} {where} ORDER BY {column} LIMIT {n}").fetchall()  # noqa: S608
    if not rows:
        raise RuntimeError(f"the generated {table} table has no usable row")
    return [str(r[0]) for r in rows]


def _targets(ids: dict[str, list[str]]) -> list[Target]:
    host = {c.service: c.gateway for c in layout.CONNECTORS}
    plan = [  # two provincial gateways and the national one, local calls and calls over one hop
        (layout.NGHEAN_CIVIL, "nghean", layout.POPULATION, "/persons/{}", layout.BIRTH, "population"),
        (layout.HANOI_PORTAL, "hanoi", layout.CIVIL_STATUS, "/births/{}", layout.BIRTH, "civil-status"),
        (layout.HANOI_PORTAL, "hanoi", layout.BUSINESS, "/enterprises/{}", layout.LICENSING, "business-registry"),
        (layout.MOJ, "national", layout.POPULATION, "/persons/{}", layout.VERIFY, "population"),
        (layout.NGHEAN_CIVIL, "nghean", layout.INSURANCE, "/insured/{}", layout.BIRTH, "insurance"),
        (layout.NGHEAN_CIVIL, "nghean", layout.CIVIL_STATUS, "/births/{}", layout.BIRTH, "civil-status"),
    ]
    return [
        Target(consumer, home, service, path.format(key), purpose, host[service])
        for consumer, home, service, path, purpose, name in plan
        for key in ids[name][:2]
    ]


def start_chaos_mesh(root: Path, people: int = 1500, say: Callable[[str], None] = print) -> ChaosMesh:
    root.mkdir(parents=True, exist_ok=True)
    redis = EmbeddedRedis(root / "redis", free_port(), durable=True)  # append-only: flushed counts survive a stop
    redis.start()
    config = MeshConfig(
        root=root, registry_port=free_port(), gateway_ports={g.code: free_port() for g in layout.GATEWAYS},
        connector_ports={c.name: free_port() for c in layout.CONNECTORS}, redis_url=redis.url, people=people,
        echo_logs=False, upstream_allow=(f"127.0.0.1:{(proxy_port := free_port())}",),  # the fault proxy's
    )  # fmt: skip
    proxy: FaultProxy | None = None
    try:
        mesh = start(config, say)
        data = config.paths.data
        ids = {
            "population": _keys(data / "population.sqlite", "persons", "id", "WHERE restricted = 0"),
            "civil-status": _keys(data / "civil_status.sqlite", "births", "id", "WHERE province_code = '040'"),
            "business-registry": _keys(data / "business.sqlite", "enterprises", "code"),
            "insurance": _keys(data / "insurance.sqlite", "insured", "si_number"),
        }
        connector = mesh.connector_urls["insurance"].rsplit(":", 1)
        proxy = FaultProxy(connector[0].removeprefix("https://"), int(connector[1]), proxy_port).start()
        with mesh.admin() as admin:
            svc = admin.get_service(PROXIED)
            body: dict[str, Any] = {k: svc[k] for k in ("version_label", "name", "description", "gateway", "openapi")}
            admin.update_service(PROXIED, {**body, "upstream_url": proxy.url, "timeout_ms": PROXIED_TIMEOUT_MS})
            admin.approve_service(PROXIED)  # a new upstream needs approval again (issue 13)
            version = int(admin.snapshot(gateway="national").headers["etag"].strip('W/"'))
        wait_for_snapshot(mesh, version)
        say(f"chaos: {PROXIED} now reaches its connector through the fault proxy at {proxy.url}")
        return ChaosMesh(mesh, redis, proxy, _targets(ids), ids)
    except BaseException:
        if proxy is not None:
            proxy.stop()
        redis.stop()
        raise


_SHARED: ChaosMesh | None = None


def shared(root: Path) -> ChaosMesh:
    """One chaos mesh per process (the first caller's `root`), stopped when the process exits."""
    global _SHARED
    if _SHARED is None:
        _SHARED = start_chaos_mesh(root, say=lambda line: None)
        atexit.register(_SHARED.stop)
    return _SHARED
