"""authn (priority 100): who is calling. Client tokens at the home gateway (protocol §4.1), gateway assertions at
the hosting gateway (§4.2). Every failure is 401 `invalid-token` / `invalid-assertion`; the detail never echoes the
token.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from lienthong.keys import PublicKey
from lienthong.problem import Problem
from lienthong.tokens import MAX_TOKEN_BYTES, TokenError, verify
from policies.base import CallContext, PolicyBase
from policies.chain import ChainConfig

MAX_ASSERTION_LIFETIME = 30
CACHE_LIMIT = 50_000


def _invalid_token(detail: str, field: str = "Authorization") -> Problem:
    challenge = {"WWW-Authenticate": 'Bearer error="invalid_token"'}
    return Problem(401, "invalid-token", detail, field=field, headers=challenge)


def _invalid_assertion(detail: str) -> Problem:
    return Problem(401, "invalid-assertion", detail, field="X-Lienthong-Assertion")


def verify_client_token(token: str, keys: Mapping[str, tuple[str, PublicKey]], audience: str) -> dict[str, Any]:
    """A client token signed by one of the snapshot's client keys (kid -> (subsystem, key)) for `audience`, its iss
    and sub the subsystem that owns the key; a 401 Problem otherwise. Also verifies the operations API's member
    tokens (gateway/ops_auth.py), with the ops audience."""

    def key_for(kid: str) -> PublicKey | None:
        found = keys.get(kid)
        return found[1] if found else None

    try:
        claims = verify(token, key_for, audience=audience, required=("exp", "iat", "aud", "iss", "sub"))
    except TokenError as exc:
        raise _invalid_token(exc.reason) from None
    owner = keys[claims["_kid"]][0]
    if claims.get("sub") != owner or claims.get("iss") != owner:
        raise _invalid_token("the token's iss and sub must be the subsystem that owns its key")
    return claims


class Authn(PolicyBase):
    name = "authn"
    priority = 100

    def __init__(self, gateway: str) -> None:
        self.gateway = gateway
        # token -> (claims, exp): one signature check per token for its whole life, not one per call
        self._verified: dict[str, tuple[dict[str, Any], float]] = {}
        # (iss, jti) -> exp: assertions already accepted by this worker
        self._seen_jti: dict[tuple[str, str], float] = {}
        self._seen_purge_at = 0.0

    def access(self, ctx: CallContext) -> None:
        if ctx.role == "provider":
            self._assertion(ctx)
        else:
            self._client_token(ctx)

    # -- client token (home / local) -------------------------------------------------------------------------------

    def _client_token(self, ctx: CallContext) -> None:
        header = ctx.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise _invalid_token("an Authorization: Bearer client token is required")
        token = token.strip()
        if len(token) > MAX_TOKEN_BYTES:
            raise _invalid_token("token too large")
        client = ctx.headers.get("x-road-client")
        if not client:
            raise _invalid_token("the X-Road-Client header is required", field="X-Road-Client")
        now = time.time()
        cached = self._verified.get(token)
        if cached is not None:
            claims, exp = cached
            owner = ctx.snapshot.client_keys.get(claims["_kid"])
            # a key revoked in a newer snapshot must stop a cached token at once
            if exp <= now or owner is None or owner[0] != claims["sub"]:
                del self._verified[token]
                cached = None
        if cached is None:
            claims = self._verify_client(token, ctx)
            self._remember(token, claims, now)
        if claims["sub"] != client:
            raise _invalid_token("X-Road-Client does not match the token's subject", field="X-Road-Client")
        ctx.client = client
        ctx.consumer_gateway = self.gateway
        ctx.purpose = ctx.headers.get("x-purpose") or None
        ctx.user_id = ctx.headers.get("x-road-userid") or None
        ctx.issue = ctx.headers.get("x-road-issue") or None

    def _verify_client(self, token: str, ctx: CallContext) -> dict[str, Any]:
        return verify_client_token(token, ctx.snapshot.client_keys, self.gateway)

    def _remember(self, token: str, claims: dict[str, Any], now: float) -> None:
        if len(self._verified) >= CACHE_LIMIT:
            self._verified = {t: v for t, v in self._verified.items() if v[1] > now}
            if len(self._verified) >= CACHE_LIMIT:
                self._verified.clear()
        self._verified[token] = (claims, float(claims["exp"]))

    # -- gateway assertion (provider) ------------------------------------------------------------------------------

    def _assertion(self, ctx: CallContext) -> None:
        token = ctx.headers.get("x-lienthong-assertion", "")
        if not token:
            raise _invalid_assertion("a gateway assertion is required")
        gateway_keys = ctx.snapshot.gateway_keys

        def key_for(kid: str) -> PublicKey | None:
            found = gateway_keys.get(kid)
            return found[1] if found else None

        try:
            claims = verify(
                token,
                key_for,
                audience=self.gateway,
                max_lifetime=MAX_ASSERTION_LIFETIME,
                required=("exp", "iat", "aud", "iss", "sub", "svc", "jti"),
            )
        except TokenError as exc:
            raise _invalid_assertion(exc.reason) from None
        signer = gateway_keys[claims["_kid"]][0]
        iss, sub = claims["iss"], claims["sub"]
        if iss != signer:
            raise _invalid_assertion("the assertion's iss is not the gateway that owns its key")
        if ctx.snapshot.home_gateway(sub) != iss:
            raise _invalid_assertion(f"gateway {iss} is not the home gateway of the consumer's member")
        if ctx.service_id is not None and claims["svc"] != ctx.service_id:
            raise _invalid_assertion("the assertion names another service")
        now = time.time()
        self._check_replay(iss, str(claims["jti"]), float(claims["exp"]), now)
        ctx.assertion = claims
        ctx.client = sub
        ctx.consumer_gateway = iss
        ctx.purpose = claims.get("purpose")
        ctx.user_id = claims.get("uid")
        ctx.issue = claims.get("issue")

    def _check_replay(self, iss: str, jti: str, exp: float, now: float) -> None:
        if now >= self._seen_purge_at:
            self._seen_jti = {k: e for k, e in self._seen_jti.items() if e + 5 > now}
            self._seen_purge_at = now + 5
        key = (iss, jti)
        if key in self._seen_jti:
            raise _invalid_assertion("assertion replayed (its jti was already accepted)")
        self._seen_jti[key] = exp


def build(cfg: ChainConfig) -> Authn:
    return Authn(cfg.gateway)
