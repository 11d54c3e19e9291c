"""The gateway assertions this gateway signs (protocol §4.2): to the hosting gateway, and to its own connectors."""

from __future__ import annotations

from typing import Any

from lienthong import tokens
from lienthong.keys import PrivateKey
from policies.base import CallContext

ASSERTION_HEADER = "x-lienthong-assertion"
ASSERTION_LIFETIME = 15  # seconds; the protocol allows at most 30, a forwarded call needs only a few


class AssertionSigner:
    def __init__(self, code: str, key: PrivateKey, kid: str) -> None:
        self.code = code
        self.key = key
        self.kid = kid

    def _claims(self, ctx: CallContext, audience: str) -> dict[str, Any]:
        claims: dict[str, Any] = {
            "iss": self.code,
            "aud": audience,
            "sub": ctx.client,
            "svc": ctx.service_id,
            "purpose": ctx.purpose,
            "jti": ctx.transaction_id,
        }
        if ctx.user_id:
            claims["uid"] = ctx.user_id
        if ctx.issue:
            claims["issue"] = ctx.issue
        if ctx.grant is not None:
            claims["grant"] = ctx.grant.id
        if ctx.traceparent:
            claims["traceparent"] = ctx.traceparent
        return claims

    def to_gateway(self, ctx: CallContext, host: str) -> str:
        return tokens.sign(self.key, self.kid, self._claims(ctx, host), lifetime=ASSERTION_LIFETIME)

    def to_connector(self, ctx: CallContext) -> str:
        claims = self._claims(ctx, f"connector:{ctx.service_id}")
        if ctx.grant is not None and ctx.grant.fields is not None:
            claims["fields"] = list(ctx.grant.fields)
        return tokens.sign(self.key, self.kid, claims, lifetime=ASSERTION_LIFETIME)
