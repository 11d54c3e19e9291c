"""The registry's key files in its data dir: its snapshot signing key, the first admin key and the mesh CA
(registry.mesh_ca), made once by `lienthong registry init`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lienthong import keys
from lienthong.keys import PrivateKey

SIGNING_KEY = "registry.key"
SIGNING_PUB = "registry.pub.jwk"
ADMIN_KEY = "admin.key"
ADMIN_PUB = "admin.pub.jwk"


class AlreadyInitialised(Exception):
    """init was asked to overwrite keys that exist."""


@dataclass(frozen=True, slots=True)
class InitResult:
    signing_key: Path
    signing_pub: Path
    admin_key: Path
    admin_pub: Path
    admin_kid: str


def init(data_dir: str | Path, ca_cert: Path | None = None, ca_key: Path | None = None) -> InitResult:
    """Create the registry signing key, the first admin key and the mesh CA (or take the operator's, `ca_cert` and
    `ca_key`), and issue the registry's serving certificate; refuse if any of them exists."""
    from registry import mesh_ca  # imported late: the PKI is not needed to read keys

    base = Path(data_dir)
    paths = [base / n for n in (SIGNING_KEY, SIGNING_PUB, ADMIN_KEY, ADMIN_PUB)]
    existing = [str(p) for p in [*paths, *mesh_ca.ca_paths(base)] if p.exists()]
    if existing:
        raise AlreadyInitialised(f"the registry is already initialised; refusing to overwrite {', '.join(existing)}")
    ca = mesh_ca.init_ca(base, ca_cert, ca_key)  # first: a refused operator CA leaves nothing behind
    mesh_ca.ensure_own_certificate(mesh_ca.tls_files(base), mesh_ca.Issuer(ca))
    signing = keys.generate()
    admin = keys.generate()
    keys.save_private(signing, paths[0])
    paths[1].write_text(json.dumps(keys.public_jwk(signing), indent=2) + "\n")
    keys.save_private(admin, paths[2])
    admin_jwk = keys.public_jwk(admin)
    paths[3].write_text(json.dumps(admin_jwk, indent=2) + "\n")
    return InitResult(paths[0], paths[1], paths[2], paths[3], admin_jwk["kid"])


def signing_key(data_dir: str | Path) -> tuple[PrivateKey, str]:
    key = keys.load_private(Path(data_dir) / SIGNING_KEY)
    return key, keys.public_jwk(key)["kid"]


def signing_public_jwk(data_dir: str | Path) -> dict[str, Any]:
    jwk: dict[str, Any] = json.loads((Path(data_dir) / SIGNING_PUB).read_text())
    return jwk


def admin_public_jwks(data_dir: str | Path) -> list[dict[str, Any]]:
    """Every admin public key kept in the data dir (admin.pub.jwk, plus admin-*.pub.jwk added later by hand)."""
    base = Path(data_dir)
    files = [base / ADMIN_PUB, *sorted(base.glob("admin-*.pub.jwk"))]
    return [json.loads(f.read_text()) for f in files if f.exists()]


def admin_kid(data_dir: str | Path) -> str:
    return str(json.loads((Path(data_dir) / ADMIN_PUB).read_text())["kid"])
