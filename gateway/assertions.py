"""The gateway assertions this gateway signs (protocol §4.2): to the hosting gateway, and to its own connectors.

Assertions are signed on every call, so the compact JWS is put together here directly (orjson + one Ed25519
signature) instead of through PyJWT, which doubled the cost (110 µs against 57 µs per token on the project's
machine). The output is the same token lienthong.tokens.sign makes: header alg/kid/typ, claims iat/nbf/exp/jti.

`jti` is this gateway's own random nonce, new for every assertion, and is what receivers key replays on (with `iss`);
the client's X-Road-Id travels as `txn` (RFC 8417's transaction identifier). A client-chosen value is never a nonce:
two consumers, or one consumer twice, may send the same X-Road-Id.
"""

from __future__ import annotations

import base64
import os
import time
from typing import Any

import orjson
from cryptography.hazmat.primitives.asymmetric import ed25519

from lienthong import tokens
from lienthong.keys import PrivateKey, algorithm_of
from policies.base import CallContext

ASSERTION_HEADER = "x-lienthong-assertion"
ASSERTION_LIFETIME = 15  # seconds; the protocol allows at most 30, a forwarded call needs only a few


def _b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


class AssertionSigner:
    def __init__(self, code: str, key: PrivateKey, kid: str) -> None:
        self.code = code
        self.key = key
        self.kid = kid
        self._header = _b64(orjson.dumps({"alg": algorithm_of(key), "kid": kid, "typ": "JWT"})) + b"."
        self._ed25519 = tokens.ed25519_signer(key) if isinstance(key, ed25519.Ed25519PrivateKey) else None

    def sign(self, claims: dict[str, Any]) -> str:
        if self._ed25519 is None:  # ES256 needs PyJWT's DER-to-raw conversion
            return tokens.sign(self.key, self.kid, claims, lifetime=ASSERTION_LIFETIME)
        now = int(time.time())
        body = {"iat": now, "nbf": now, "exp": now + ASSERTION_LIFETIME, **claims}
        signing_input = self._header + _b64(orjson.dumps(body))
        return (signing_input + b"." + _b64(self._ed25519(signing_input))).decode()

    def _claims(self, ctx: CallContext, audience: str) -> dict[str, Any]:
        claims: dict[str, Any] = {
            "iss": self.code,
            "aud": audience,
            "sub": ctx.client,
            "svc": ctx.service_id,
            "purpose": ctx.purpose,
            "jti": os.urandom(16).hex(),
            "txn": ctx.transaction_id,
        }
        if ctx.user_id:
            claims["uid"] = ctx.user_id
        if ctx.issue:
            claims["issue"] = ctx.issue
        if ctx.purpose_by_default:  # no X-Purpose came: the hosting gateway's audit says so too (issue 15)
            claims["purpose_default"] = True
        if ctx.grant is not None:
            claims["grant"] = ctx.grant.id
        if ctx.traceparent:
            claims["traceparent"] = ctx.traceparent
        return claims

    def to_gateway(self, ctx: CallContext, host: str) -> str:
        return self.sign(self._claims(ctx, host))

    def to_connector(self, ctx: CallContext) -> str:
        claims = self._claims(ctx, f"connector:{ctx.service_id}")
        claims["method"], claims["path"] = ctx.method, ctx.path  # what was authorized: the connector routes only that
        if ctx.grant is not None and ctx.grant.fields is not None:
            claims["fields"] = list(ctx.grant.fields)
        return self.sign(claims)
