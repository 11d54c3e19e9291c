"""A registry snapshot with a bad signature, or an older version, served to a live gateway (issue 7, protocol §7).

The registry here is the stand-in of tests/mesh_support.py (it serves whatever JWS files the test writes), so the
test can play an attacker who controls the registry's address but not its signing key.
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from lienthong.redis_connection import EmbeddedRedis
from tests.mesh_support import MESH_TLS, Mesh, make_key, sign_snapshot


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory, redis_server: EmbeddedRedis) -> Iterator[Mesh]:
    root = tmp_path_factory.mktemp("snapshot-attack")
    m = Mesh(root, root / "logs", policies="none", registry="standin", redis_url=redis_server.url)
    m.add_gateway("national")
    try:
        m.start_registry()
        m.add_member("VN/GOV/BCA", "national")
        m.publish()
        m.publish()  # version 2: the gateway will be offered version 1 later, a rollback
        m.start_gateway("national")
        yield m
    finally:
        m.stop()


def held(mesh: Mesh) -> int:
    r = httpx.get(f"{mesh.gateways['national'].url}/healthz", timeout=5, verify=MESH_TLS)
    return int(r.json()["snapshot_version"])


def serve(mesh: Mesh, data: bytes) -> None:
    target = mesh.snap_dir / "national.jws"
    tmp = target.with_suffix(".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, target)


def doc_at(mesh: Mesh, version: int) -> dict[str, object]:
    doc = copy.deepcopy(mesh.doc)
    doc.update(version=version, gateway="national", upstreams={})
    return doc


def still_holds(mesh: Mesh, version: int, seconds: float = 2.5) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert held(mesh) == version
        time.sleep(0.2)


def test_a_snapshot_signed_by_another_key_is_refused(mesh: Mesh, tmp_path: Path) -> None:
    version = held(mesh)
    assert version == mesh.version
    impostor = make_key(tmp_path / "impostor.key", kid=mesh.registry_key.kid)  # same kid, wrong key
    serve(mesh, sign_snapshot(doc_at(mesh, version + 10), impostor))
    still_holds(mesh, version)
    proc = mesh.gateways["national"].proc
    assert proc is not None and "signature" in proc.log_tail().lower()


@pytest.mark.parametrize("part", ["common", "gateway"])
def test_a_snapshot_with_one_byte_changed_is_refused(mesh: Mesh, part: str) -> None:
    version = held(mesh)
    envelope = orjson.loads(sign_snapshot(doc_at(mesh, version + 20), mesh.registry_key))
    header, payload, signature = envelope[part].split(".")
    tampered = bytearray(payload.encode())
    tampered[len(tampered) // 2] ^= 0x01
    envelope[part] = ".".join([header, tampered.decode(), signature])
    serve(mesh, orjson.dumps(envelope))
    still_holds(mesh, version)


def test_another_gateways_part_is_refused(mesh: Mesh) -> None:
    """Validly signed, but the gateway part (its upstream URLs) names another gateway: never installed."""
    version = held(mesh)
    serve(mesh, sign_snapshot({**doc_at(mesh, version + 30), "gateway": "hanoi"}, mesh.registry_key))
    still_holds(mesh, version)


def test_an_older_version_is_refused(mesh: Mesh) -> None:
    version = held(mesh)
    serve(mesh, sign_snapshot(doc_at(mesh, version - 1), mesh.registry_key))  # validly signed, but a rollback
    still_holds(mesh, version)
    serve(mesh, sign_snapshot(doc_at(mesh, version + 1), mesh.registry_key))  # and a real update still lands
    deadline = time.monotonic() + 10
    while held(mesh) != version + 1:
        assert time.monotonic() < deadline, "a valid newer snapshot was not installed"
        time.sleep(0.1)
