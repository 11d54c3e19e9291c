"""Signing and strict verification of the mesh's JWTs (docs/protocol.md section 4).

Only asymmetric algorithms from an allowlist are accepted, so `none`, HS* and a public key used as an HMAC
secret all fail before any key is touched.
"""

from __future__ import annotations

import base64
import binascii
import re
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import jwt
import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from lienthong.keys import ALLOWED_ALGORITHMS, PrivateKey, PublicKey, algorithm_of

try:  # libsodium signs in 2/3 and verifies in half of OpenSSL's time; optional, cryptography is the fallback
    from nacl.bindings import crypto_sign, crypto_sign_open, crypto_sign_seed_keypair
    from nacl.exceptions import BadSignatureError
    HAVE_SODIUM = True
except ImportError:  # pragma: no cover - depends on the installation
    HAVE_SODIUM = False

MAX_CLIENT_TOKEN_LIFETIME = 300
MAX_TOKEN_BYTES = 8192
CLOCK_SKEW = 5
UNKNOWN_KID = "unknown or revoked key id"  # verify's reason when key_for_kid has no key: a caller may refetch keys


class TokenError(Exception):
    """A token was refused; `reason` is safe to show to the caller (it holds no key material)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def sign(
    key: PrivateKey, kid: str, claims: Mapping[str, Any], *, lifetime: int = 60, now: float | None = None
) -> str:
    """Sign claims, adding iat/nbf/exp/jti when absent."""
    issued = int(now if now is not None else time.time())
    body = {"iat": issued, "nbf": issued, "exp": issued + lifetime, "jti": uuid.uuid4().hex, **claims}
    return jwt.encode(body, key, algorithm=algorithm_of(key), headers={"kid": kid})


_B64URL = re.compile(rb"[A-Za-z0-9_-]*")
_FORMAT = "token signature or format is invalid"


def _segment(segment: bytes) -> bytes:
    """Strict base64url: the alphabet only, at most canonical '=' padding, no stray bits (as PyJWT 2.10+ checks)."""
    stripped = segment.rstrip(b"=")
    padding = len(segment) - len(stripped)
    if padding > 2 or (padding and len(segment) % 4) or len(stripped) % 4 == 1 or not _B64URL.fullmatch(stripped):
        raise TokenError(_FORMAT)
    try:
        decoded = base64.urlsafe_b64decode(stripped + b"=" * (-len(stripped) % 4))
    except (binascii.Error, ValueError):
        raise TokenError(_FORMAT) from None
    if base64.urlsafe_b64encode(decoded).rstrip(b"=") != stripped:
        raise TokenError(_FORMAT)
    return decoded


@dataclass(frozen=True, slots=True)
class _Parts:
    header: dict[str, Any]
    signing_input: bytes
    payload: bytes
    signature: bytes
    kid: str


def _parse(token: str) -> _Parts:
    """Split and check the compact JWS and its header; raise TokenError("malformed token") on any shape error."""
    if len(token) > MAX_TOKEN_BYTES:
        raise TokenError("token too large")
    try:
        raw = token.encode("ascii")
        signing_input, crypto = raw.rsplit(b".", 1)
        header_segment, payload_segment = signing_input.split(b".", 1)
        header = orjson.loads(_segment(header_segment))
    except (UnicodeEncodeError, ValueError, TokenError):  # orjson.JSONDecodeError is a ValueError
        raise TokenError("malformed token") from None
    if not isinstance(header, dict):
        raise TokenError("malformed token")
    alg = header.get("alg")
    if alg not in ALLOWED_ALGORITHMS:
        raise TokenError(f"algorithm {alg!r} is not allowed; use one of {', '.join(ALLOWED_ALGORITHMS)}")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise TokenError("token header has no kid")
    if "crit" in header or "b64" in header:  # no extension is understood here, so none is accepted
        raise TokenError(_FORMAT)
    return _Parts(header, signing_input, payload_segment, crypto, kid)


def unverified_kid(token: str) -> str:
    return _parse(token).kid


def ed25519_signer(key: ed25519.Ed25519PrivateKey) -> Callable[[bytes], bytes]:
    """sign(message) -> 64-byte signature; Ed25519 is deterministic, so both backends give the same bytes."""
    if not HAVE_SODIUM:
        return key.sign
    secret = crypto_sign_seed_keypair(key.private_bytes_raw())[1]
    return lambda message: crypto_sign(message, secret)[:64]


# id(key) -> (key, raw bytes); the entry holds the key, so its id cannot be reused while it is cached
_RAW_PUBLIC: dict[int, tuple[ed25519.Ed25519PublicKey, bytes]] = {}


def _ed25519_ok(key: ed25519.Ed25519PublicKey, signature: bytes, signing_input: bytes) -> bool:
    if not HAVE_SODIUM:
        try:
            key.verify(signature, signing_input)
        except InvalidSignature:
            return False
        return True
    cached = _RAW_PUBLIC.get(id(key))
    if cached is not None and cached[0] is key:
        raw = cached[1]
    else:
        if len(_RAW_PUBLIC) >= 10_000:  # keys come from snapshots; a new snapshot brings new key objects
            _RAW_PUBLIC.clear()
        raw = key.public_bytes_raw()
        _RAW_PUBLIC[id(key)] = (key, raw)
    if len(signature) != 64:
        return False
    try:
        crypto_sign_open(signature + signing_input, raw)
    except BadSignatureError:
        return False
    return True


def _signature_ok(key: PublicKey, signature: bytes, signing_input: bytes) -> bool:
    if isinstance(key, ed25519.Ed25519PublicKey):
        return _ed25519_ok(key, signature, signing_input)
    try:
        if len(signature) != 64 or not isinstance(key.curve, ec.SECP256R1):
            return False
        der = encode_dss_signature(int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big"))
        key.verify(der, signing_input, ec.ECDSA(hashes.SHA256()))
        return True
    except InvalidSignature:
        return False


def _number(claims: dict[str, Any], name: str) -> int:
    try:
        return int(claims[name])
    except (ValueError, TypeError, OverflowError):
        raise TokenError(_FORMAT) from None


def verify(
    token: str,
    key_for_kid: Callable[[str], PublicKey | None],
    *,
    audience: str,
    max_lifetime: int = MAX_CLIENT_TOKEN_LIFETIME,
    required: tuple[str, ...] = ("exp", "iat", "aud", "iss"),
) -> dict[str, Any]:
    """Verify signature, audience, time window and lifetime; return the claims or raise TokenError.

    The compact JWS is checked here directly (strict base64url, orjson, one `cryptography` call), with PyJWT's
    rules and order, because PyJWT's per-character alphabet check alone cost more than the signature itself: this
    runs for every gateway assertion a hosting gateway or a connector receives.
    """
    parts = _parse(token)
    key = key_for_kid(parts.kid)
    if key is None:
        raise TokenError(UNKNOWN_KID)
    if parts.header["alg"] != algorithm_of(key):
        raise TokenError(_FORMAT)
    signature = _segment(parts.signature)
    if not _signature_ok(key, signature, parts.signing_input):
        raise TokenError(_FORMAT)
    try:
        claims = orjson.loads(_segment(parts.payload))
    except ValueError:
        raise TokenError(_FORMAT) from None
    if not isinstance(claims, dict):
        raise TokenError(_FORMAT)
    for name in required:
        if claims.get(name) is None:
            raise TokenError(f"token lacks the {name!r} claim")
    now = time.time()
    if "iat" in claims and _number(claims, "iat") > now + CLOCK_SKEW:
        raise TokenError("token used before its time (nbf/iat in the future)")
    if "nbf" in claims and _number(claims, "nbf") > now + CLOCK_SKEW:
        raise TokenError("token used before its time (nbf/iat in the future)")
    if "exp" in claims and _number(claims, "exp") <= now - CLOCK_SKEW:
        raise TokenError("token expired")
    aud = claims.get("aud")
    if not aud:
        raise TokenError("token lacks the 'aud' claim")
    # One audience, as a string (RFC 7519 §4.1.3 allows that form when there is one): a list, even of one, is
    # refused, so a token is good at exactly one gateway or registry and every verifier reads aud alike.
    if not isinstance(aud, str):
        raise TokenError("token 'aud' must be one audience (a string), not a list")
    if aud != audience:
        raise TokenError("token audience does not name this service")
    for name in ("sub", "jti"):
        if name in claims and not isinstance(claims[name], str):
            raise TokenError(_FORMAT)
    lifetime = int(claims["exp"]) - int(claims["iat"])
    if lifetime > max_lifetime:
        raise TokenError(f"token lifetime {lifetime}s exceeds the maximum of {max_lifetime}s")
    claims["_kid"] = parts.kid
    return claims
