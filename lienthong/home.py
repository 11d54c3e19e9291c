"""A mesh home: the one folder (default ./var, `--home`, env LIENTHONG_HOME) under which a mesh on one machine keeps
its state: Redis, the registry's keys and CA, each gateway's and connector's keys and certificates, the client
systems' keys, data and logs. Every part and command that reads or writes such a folder names its places here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class MeshPaths:
    """Where the mesh keeps its state; everything under one folder (default ./var)."""

    root: Path = field(default_factory=lambda: Path("var"))

    @property
    def redis(self) -> Path:
        return self.root / "redis"

    @property
    def registry(self) -> Path:
        return self.root / "registry"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def clients(self) -> Path:
        return self.root / "clients"

    @property
    def ca_cert(self) -> Path:
        """The mesh CA certificate `lienthong registry init` writes; every process verifies its peers with it."""
        return self.registry / "ca.crt"

    def gateway(self, code: str) -> Path:
        return self.root / "gateways" / code

    def gateway_tls(self, code: str) -> Path:
        return self.gateway(code) / "tls"

    def connector_tls(self, name: str) -> Path:
        return self.root / "connectors" / name / "tls"

    def client_key(self, subsystem: str) -> Path:
        return self.clients / (_slug(subsystem) + ".key")

    def client_tls(self, subsystem: str) -> Path:
        """The client system's certificate (`lienthong client cert --out`), what `lienthong call` presents."""
        return self.clients / _slug(subsystem) / "tls"


def _slug(subsystem: str) -> str:
    return subsystem.replace("/", "_")
