"""A consumer system's side of the protocol: sign a client token and call a service through the home gateway.

Used by `lienthong call`, the demo and the tests, so that every caller speaks protocol §3-§4.1 the same way.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson

from lienthong import keys, tokens
from lienthong.keys import PrivateKey


@dataclass
class MeshClient:
    """One consumer subsystem talking to its home gateway; the token is re-signed shortly before it expires."""

    gateway_url: str
    gateway_code: str
    subsystem: str
    key: PrivateKey
    kid: str | None = None
    token_lifetime: int = 120
    http: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=30.0))
    _token: str = ""
    _token_exp: float = 0.0

    def token(self) -> str:
        now = time.time()
        if now > self._token_exp - 10:
            kid = self.kid or keys.public_jwk(self.key)["kid"]
            claims = {"iss": self.subsystem, "sub": self.subsystem, "aud": self.gateway_code}
            self._token = tokens.sign(self.key, kid, claims, lifetime=self.token_lifetime, now=now)
            self._token_exp = now + self.token_lifetime
        return self._token

    def headers(self, purpose: str, **extra: str | None) -> dict[str, str]:
        out = {"Authorization": f"Bearer {self.token()}", "X-Road-Client": self.subsystem, "X-Purpose": purpose}
        out.update({k: v for k, v in extra.items() if v is not None})
        return out

    def call(
        self,
        method: str,
        target: str,
        purpose: str,
        *,
        body: Any = None,
        user_id: str | None = None,
        issue: str | None = None,
        idempotency_key: str | None = None,
        params: dict[str, str] | None = None,
    ) -> httpx.Response:
        """`target` is SERVICE_ID + provider path, e.g. VN/GOV/BCA/population/persons/persons/001203004567."""
        headers = self.headers(
            purpose,
            **{
                "X-Road-Id": uuid.uuid4().hex,
                "X-Road-UserId": user_id,
                "X-Road-Issue": issue,
                "Idempotency-Key": idempotency_key,
                "Content-Type": "application/json" if body is not None else None,
            },
        )
        content = orjson.dumps(body) if body is not None else None
        url = f"{self.gateway_url.rstrip('/')}/r1/{target.lstrip('/')}"
        return self.http.request(method.upper(), url, headers=headers, content=content, params=params)

    def close(self) -> None:
        self.http.close()
