"""Signing and strict verification of the mesh's JWTs (docs/protocol.md section 4).

Only asymmetric algorithms from an allowlist are accepted, so `none`, HS* and a public key used as an HMAC
secret all fail before any key is touched.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import jwt

from lienthong.keys import ALLOWED_ALGORITHMS, PrivateKey, PublicKey, algorithm_of

MAX_CLIENT_TOKEN_LIFETIME = 300
MAX_TOKEN_BYTES = 8192
CLOCK_SKEW = 5


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


def unverified_kid(token: str) -> str:
    if len(token) > MAX_TOKEN_BYTES:
        raise TokenError("token too large")
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as exc:
        raise TokenError("malformed token") from exc
    alg = header.get("alg")
    if alg not in ALLOWED_ALGORITHMS:
        raise TokenError(f"algorithm {alg!r} is not allowed; use one of {', '.join(ALLOWED_ALGORITHMS)}")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise TokenError("token header has no kid")
    return kid


def verify(
    token: str,
    key_for_kid: Callable[[str], PublicKey | None],
    *,
    audience: str | list[str],
    max_lifetime: int = MAX_CLIENT_TOKEN_LIFETIME,
    required: tuple[str, ...] = ("exp", "iat", "aud", "iss"),
) -> dict[str, Any]:
    """Verify signature, audience, time window and lifetime; return the claims or raise TokenError."""
    kid = unverified_kid(token)
    key = key_for_kid(kid)
    if key is None:
        raise TokenError("unknown or revoked key id")
    algorithm = algorithm_of(key)
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            key,
            algorithms=[algorithm],
            audience=audience,
            leeway=CLOCK_SKEW,
            options={"require": list(required)},
        )
    except jwt.ExpiredSignatureError as exc:
        raise TokenError("token expired") from exc
    except jwt.ImmatureSignatureError as exc:
        raise TokenError("token used before its time (nbf/iat in the future)") from exc
    except jwt.InvalidAudienceError as exc:
        raise TokenError("token audience does not name this service") from exc
    except jwt.MissingRequiredClaimError as exc:
        raise TokenError(f"token lacks the {exc.claim!r} claim") from exc
    except jwt.PyJWTError as exc:
        raise TokenError("token signature or format is invalid") from exc
    lifetime = int(claims["exp"]) - int(claims["iat"])
    if lifetime > max_lifetime:
        raise TokenError(f"token lifetime {lifetime}s exceeds the maximum of {max_lifetime}s")
    claims["_kid"] = kid
    return claims
