"""Signing keys of the mesh: Ed25519 (EdDSA) by default, P-256 (ES256) accepted. PEM on disk, JWK on the wire."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Literal

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

PrivateKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey
PublicKey = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey
Algorithm = Literal["EdDSA", "ES256"]

ALLOWED_ALGORITHMS: tuple[Algorithm, ...] = ("EdDSA", "ES256")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def generate(algorithm: Algorithm = "EdDSA") -> PrivateKey:
    if algorithm == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    return ed25519.Ed25519PrivateKey.generate()


def algorithm_of(key: PrivateKey | PublicKey) -> Algorithm:
    return "EdDSA" if isinstance(key, ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey) else "ES256"


def private_pem(key: PrivateKey) -> bytes:
    encoding, fmt = serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8
    return key.private_bytes(encoding, fmt, serialization.NoEncryption())


def save_private(key: PrivateKey, path: str | os.PathLike[str]) -> Path:
    """Write the key readable by its owner only."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(private_pem(key))
    return target


def load_private(path: str | os.PathLike[str]) -> PrivateKey:
    key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    if not isinstance(key, ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey):
        raise ValueError(f"{path}: only Ed25519 and P-256 keys are used in the mesh")
    return key


def public_jwk(key: PrivateKey | PublicKey, kid: str | None = None) -> dict[str, str]:
    """The public half as a JWK; kid defaults to the RFC 7638 thumbprint."""
    pub = key.public_key() if isinstance(key, ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey) else key
    if isinstance(pub, ed25519.Ed25519PublicKey):
        raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        jwk = {"kty": "OKP", "crv": "Ed25519", "x": _b64(raw)}
    else:
        numbers = pub.public_numbers()
        jwk = {
            "kty": "EC",
            "crv": "P-256",
            "x": _b64(numbers.x.to_bytes(32, "big")),
            "y": _b64(numbers.y.to_bytes(32, "big")),
        }
    jwk["kid"] = kid or thumbprint(jwk)
    jwk["alg"] = algorithm_of(pub)
    jwk["use"] = "sig"
    return jwk


def thumbprint(jwk: dict[str, Any]) -> str:
    required = ("crv", "kty", "x") if jwk.get("kty") == "OKP" else ("crv", "kty", "x", "y")
    canonical = json.dumps({k: jwk[k] for k in required}, separators=(",", ":"), sort_keys=True)
    return _b64(hashlib.sha256(canonical.encode()).digest())[:16]


def public_key_from_jwk(jwk: dict[str, Any]) -> PublicKey:
    """Parse a public JWK; raises ValueError for anything but an Ed25519 or P-256 public key."""
    kty, crv = jwk.get("kty"), jwk.get("crv")
    if "d" in jwk:
        raise ValueError("a JWK with a private part ('d') is never accepted")
    try:
        if kty == "OKP" and crv == "Ed25519":
            return ed25519.Ed25519PublicKey.from_public_bytes(_unb64(str(jwk["x"])))
        if kty == "EC" and crv == "P-256":
            x = int.from_bytes(_unb64(str(jwk["x"])), "big")
            y = int.from_bytes(_unb64(str(jwk["y"])), "big")
            return ec.EllipticCurvePublicNumbers(x, y, ec.SECP256R1()).public_key()
    except (KeyError, ValueError, TypeError) as exc:
        raise ValueError(f"malformed {kty}/{crv} JWK: {exc}") from exc
    raise ValueError("only OKP/Ed25519 and EC/P-256 keys are accepted")
