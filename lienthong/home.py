"""A mesh home: the one folder (default ./var, `--home`, env LIENTHONG_HOME) under which a mesh on one machine keeps
its state: Redis, the registry's keys and CA, each gateway's and connector's keys and certificates, the client
systems' keys, data and logs. Every part and command that reads or writes such a folder names its places here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])
HOME_ENV = "LIENTHONG_HOME"
DEFAULT_HOME = Path("var")


def home_option(help: str) -> Callable[[F], F]:
    """The `--home` option of every command that works on a mesh home (env LIENTHONG_HOME, default ./var)."""
    return click.option("--home", type=click.Path(file_okay=False, path_type=Path), envvar=HOME_ENV,
                        default=DEFAULT_HOME, show_default=True, help=f"{help} (env {HOME_ENV})")  # fmt: skip


@dataclass
class MeshPaths:
    """Where the mesh keeps its state; everything under one folder (default ./var)."""

    root: Path = field(default_factory=lambda: DEFAULT_HOME)

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
