"""The registry process's live parts (Redis, store, snapshot builder, version watch), shared by the handlers.

Connexion resolves handlers as module-level functions, so the app installs one Runtime here at startup.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import redis.asyncio as aioredis

from registry.mesh_ca import Issuer
from registry.settings import RegistrySettings
from registry.snapshot_builder import SnapshotBuilder
from registry.store import Store
from registry.version_watch import VersionWatch


@dataclass
class Runtime:
    redis: aioredis.Redis
    store: Store
    builder: SnapshotBuilder
    watch: VersionWatch
    data_dir: Path
    settings: RegistrySettings
    redis_url: str
    issuer: Issuer  # the mesh CA, signing POST /v1/certificates


_current: Runtime | None = None


def install(runtime: Runtime | None) -> None:
    global _current
    _current = runtime


def current() -> Runtime:
    if _current is None:
        raise RuntimeError("the registry runtime is not started")
    return _current
