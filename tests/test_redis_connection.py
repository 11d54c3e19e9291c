"""The embedded Redis keeps its data across a restart (append-only file on)."""

from __future__ import annotations

from pathlib import Path

import redis

from lienthong.redis_connection import EmbeddedRedis, resolve_url


def test_embedded_redis_survives_restart(tmp_path: Path) -> None:
    first = EmbeddedRedis(tmp_path / "redis")
    client = redis.Redis.from_url(first.start())
    client.set("lienthong:test", "kept")
    client.close()
    first.stop()

    second = EmbeddedRedis(tmp_path / "redis")
    try:
        again = redis.Redis.from_url(second.start())
        assert again.get("lienthong:test") == b"kept"
        again.close()
    finally:
        second.stop()


def test_resolve_url_prefers_redis_url(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")
    url, owned = resolve_url(tmp_path)
    assert url == "redis://127.0.0.1:1/0"
    assert owned is None
