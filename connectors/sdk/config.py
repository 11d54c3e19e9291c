"""How one running connector is configured (from the CLI or a test)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPLAY_WINDOW = 30  # protocol §4.2: an assertion lives at most 30 s, so that is how long a jti is remembered


# `lienthong data generate` names its SQLite files after the databases, not the connectors.
DATABASE_FILES = {"business-registry": "business", "civil-status": "civil_status"}


def default_database_url(name: str, data_dir: str | Path = "var/data") -> str:
    return f"sqlite:///{Path(data_dir) / DATABASE_FILES.get(name, name)}.sqlite"


@dataclass
class ConnectorConfig:
    gateway: str  # code of the hosting gateway: the only caller accepted
    database_url: str
    registry_url: str | None = None
    key_path: Path | None = None  # integrator key of the provider subsystem, for registry calls
    kid: str | None = None
    public_url: str | None = None  # where the hosting gateway reaches this connector (registered as upstream_url)
    gateway_keys_path: Path | None = None  # offline: a JSON list of the gateway's public JWKs
    gateway_keys: list[dict[str, Any]] | None = None  # the same, given directly (tests)
    create_schema: bool = True
    register: bool = True  # register the service in the registry on start (when registry_url, key and kid are set)
    key_refresh_interval: float = 5.0  # unknown kid: refetch the gateway keys at most this often
    tls_dir: Path | None = None  # HTTPS with this pki.CertFiles directory, the gateway's certificate required;
    # None serves plain HTTP (--insecure-http, development only)
    registry_ca: Path | None = None  # the mesh CA an https registry is verified with
