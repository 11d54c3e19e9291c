"""Verification of the hosting gateway's assertion (protocol §4.2) on every request a connector answers.

Replay protection keeps accepted (iss, jti) pairs in process memory for the assertion's lifetime (at most 30 s); jti
is the hosting gateway's own nonce, new for every assertion, never the client's X-Road-Id (that is `txn`), so one
consumer's transaction id can never make another's call look like a replay. With
several worker processes each has its own memory, so a replay sent to another worker within 30 s is not caught there;
the gateway signs a fresh assertion per call and the window is short, which is the trade-off accepted here.
"""

from __future__ import annotations

import time
from typing import Any

from connectors.sdk.config import REPLAY_WINDOW
from connectors.sdk.gateway_keys import GatewayKeys
from lienthong import tokens
from lienthong.tokens import TokenError

HEADER = "x-lienthong-assertion"
_REQUIRED = ("exp", "iat", "aud", "iss", "sub", "jti")


class ReplayCache:
    def __init__(self) -> None:
        self._seen: dict[tuple[str, str], float] = {}
        self._next_purge = 0.0

    def check_and_add(self, iss: str, jti: str, exp: float, now: float) -> bool:
        """False if (iss, jti) was already accepted and is still within its lifetime."""
        if now >= self._next_purge:
            self._seen = {k: v for k, v in self._seen.items() if v + tokens.CLOCK_SKEW > now}
            self._next_purge = now + 1.0
        key = (iss, jti)
        seen = self._seen.get(key)
        if seen is not None and seen + tokens.CLOCK_SKEW > now:
            return False
        self._seen[key] = exp
        return True

    def __len__(self) -> int:
        return len(self._seen)


class AssertionVerifier:
    def __init__(self, audience: str, service_id: str, keys: GatewayKeys) -> None:
        self.audience = audience
        self.service_id = service_id
        self.keys = keys
        self.replays = ReplayCache()

    async def verify(self, token: str) -> dict[str, Any]:
        """The verified claims, or TokenError with a reason safe to show."""
        try:  # one parse of the token in the usual case: the key is already known
            claims = tokens.verify(
                token, self.keys.get, audience=self.audience, max_lifetime=REPLAY_WINDOW, required=_REQUIRED
            )
        except TokenError as exc:
            if exc.reason != tokens.UNKNOWN_KID:
                raise
            # a rotated key: refetch (at most once per interval) and verify again
            key = await self.keys.ensure(tokens.unverified_kid(token))
            if key is None:
                raise TokenError("unknown key id: not a key of the hosting gateway") from None
            claims = tokens.verify(
                token, lambda _kid: key, audience=self.audience, max_lifetime=REPLAY_WINDOW, required=_REQUIRED
            )
        if claims.get("iss") != self.keys.gateway:
            raise TokenError("the assertion was not issued by this connector's hosting gateway")
        svc = claims.get("svc")
        if svc is not None and svc != self.service_id:
            raise TokenError("the assertion names another service")
        if not isinstance(claims.get("sub"), str) or not isinstance(claims.get("jti"), str):
            raise TokenError("the assertion lacks a consumer (sub) or nonce (jti)")
        if not isinstance(claims.get("txn", ""), str):
            raise TokenError("the assertion's transaction id (txn) must be a string")
        fields = claims.get("fields")
        if fields is not None and not (isinstance(fields, list) and all(isinstance(f, str) for f in fields)):
            raise TokenError("the assertion's fields claim must be a list of dotted paths")
        if not self.replays.check_and_add(claims["iss"], claims["jti"], float(claims["exp"]), time.time()):
            raise TokenError("the assertion was already used (replay)")
        return claims
