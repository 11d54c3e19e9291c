"""Support for the connector tests: a test hosting gateway key that signs real assertions, connectors served by
uvicorn on a real port in a thread, and throwaway SQLite / PostgreSQL databases."""

from __future__ import annotations

import datetime as dt
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import uvicorn

from connectors.sdk import ConnectorConfig, ConnectorDefinition, build_app
from lienthong import keys, tokens

GATEWAY = "national"
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
BACKENDS = ["sqlite", "postgresql"]


@dataclass
class SigningGateway:
    """The hosting gateway as the connector sees it: a code and a signing key registered for it."""

    code: str
    key: keys.PrivateKey
    kid: str

    @classmethod
    def make(cls, code: str = GATEWAY) -> SigningGateway:
        key = keys.generate()
        return cls(code, key, keys.public_jwk(key)["kid"])

    @property
    def jwks(self) -> list[dict[str, Any]]:
        return [keys.public_jwk(self.key, self.kid)]

    def assertion(self, service_id: str, *, lifetime: int = 20, **claims: Any) -> str:
        body = {
            "iss": self.code,
            "aud": f"connector:{service_id}",
            "sub": "VN/PROV/NGHEAN/civil-status",
            "svc": service_id,
            "purpose": "birth-registration",
            "grant": "g-test",
            "jti": uuid.uuid4().hex,
            **claims,
        }
        if body.get("fields") is None:  # absent fields claim: every field
            body.pop("fields", None)
        return tokens.sign(self.key, self.kid, body, lifetime=lifetime)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ThreadServer:
    """A connector on a real port: uvicorn in a thread (fast to start; the CLI test runs a real process)."""

    def __init__(self, definition: ConnectorDefinition, config: ConnectorConfig) -> None:
        self.app = build_app(definition, config)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cfg = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(cfg)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self) -> ThreadServer:
        self.thread.start()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/healthz", timeout=0.5).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.05)
        raise RuntimeError("connector did not start")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def postgres_available() -> str | None:
    """None when a server answers, else why not (shown as the skip reason)."""
    try:
        with psycopg.connect(PG_ADMIN, connect_timeout=2):
            return None
    except psycopg.Error as exc:
        return f"no PostgreSQL server answers on 127.0.0.1:5432 ({type(exc).__name__})"


@contextmanager
def database_url(backend: str, tmp_path: Path) -> Iterator[str]:
    """A fresh database: a SQLite file, or a throwaway PostgreSQL database dropped afterwards."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'connector.sqlite'}"
        return
    reason = postgres_available()
    if reason is not None:
        pytest.skip(reason)
    name = f"lt_conn_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def serve(definition: ConnectorDefinition, gateway: SigningGateway, url: str) -> Iterator[ThreadServer]:
    server = ThreadServer(
        definition, ConnectorConfig(gateway=gateway.code, database_url=url, gateway_keys=gateway.jwks)
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()
        server.app.runtime.engine.dispose()


@contextmanager
def connector_on(
    definition: ConnectorDefinition, backend: str, tmp_path: Path, seed: Callable[[str], None] | None = None
) -> Iterator[Caller]:
    """A connector serving a fresh database of `backend` (seeded when asked), called as its own gateway would."""
    gateway = SigningGateway.make()
    with database_url(backend, tmp_path) as url:
        if seed is not None:
            seed(url)
        with serve(definition, gateway, url) as server:
            yield Caller(server, gateway, definition.service_id)


def created(entity: str, ids: Iterable[str]) -> list[dict[str, Any]]:
    """Change-feed rows saying each id was created at the start of 2024, for seeding a connector's `changes`."""
    at = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    return [{"entity": entity, "entity_id": i, "op": "create", "at": at} for i in ids]


class Caller:
    """Calls a connector as its hosting gateway would: a fresh assertion per request."""

    def __init__(self, server: ThreadServer, gateway: SigningGateway, service_id: str) -> None:
        self.server = server
        self.gateway = gateway
        self.service_id = service_id
        self.http = httpx.Client(base_url=server.url, timeout=10)

    def headers(
        self, fields: list[str] | None = None, extra: dict[str, str] | None = None, **claims: Any
    ) -> dict[str, str]:
        token = self.gateway.assertion(self.service_id, fields=fields, **claims)
        return {"X-Lienthong-Assertion": token, **(extra or {})}

    def get(self, path: str, *, fields: list[str] | None = None, **kw: Any) -> httpx.Response:
        return self.http.get(path, headers=self.headers(fields), **kw)

    def post(
        self, path: str, json: Any, *, fields: list[str] | None = None, headers: dict[str, str] | None = None, **kw: Any
    ) -> httpx.Response:
        return self.http.post(path, json=json, headers=self.headers(fields, headers), **kw)


def assert_problem(r: httpx.Response, status: int, code: str, field: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json"), r.headers
    body: dict[str, Any] = r.json()
    assert body["status"] == status and body["code"] == code, body
    if field is not None:
        assert body.get("field") == field, body
    return body
