"""A consumer system's side of the protocol: call a service through the home gateway, authenticated either by a
signed client token (JWT) or, X-Road's way, by the TLS client certificate its `http` client presents (then no token
is sent: the certificate names the subsystem, and X-Road-Client must be that subsystem).

Used by `lienthong call`, the demo and the tests, so that every caller speaks protocol §3-§4.1 and §9 the same way.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson

from lienthong import keys, pki, tokens
from lienthong.keys import PrivateKey

TIMEOUT = 30.0

PROBLEM_ACCEPT = "application/problem+json, */*;q=0.5"


def tls_http(ca: Path, cert_dir: Path | None = None, timeout: float = TIMEOUT) -> httpx.Client:
    """An HTTPS client that verifies the gateway with the mesh CA and, given a pki.CertFiles dir, presents its
    certificate (TLS 1.3, kept-alive connections)."""
    files = pki.CertFiles(cert_dir) if cert_dir is not None else None
    return httpx.Client(timeout=timeout, verify=pki.client_context(ca, files))


@dataclass
class MeshClient:
    """One consumer subsystem talking to its home gateway; the token is re-signed shortly before it expires. Without
    a key it sends no token and relies on the client certificate of `http` (see tls_http)."""

    gateway_url: str
    gateway_code: str
    subsystem: str
    key: PrivateKey | None = None
    kid: str | None = None
    token_lifetime: int = 120
    http: httpx.Client | None = None
    _token: str = ""
    _token_exp: float = 0.0

    def __post_init__(self) -> None:
        if self.http is None:
            self.http = httpx.Client(timeout=TIMEOUT)

    @property
    def by_certificate(self) -> bool:
        return self.key is None

    def token(self) -> str:
        if self.key is None:
            raise ValueError("this client authenticates by its TLS client certificate; it has no key to sign with")
        now = time.time()
        if now > self._token_exp - 10:
            kid = self.kid or keys.public_jwk(self.key)["kid"]
            claims = {"iss": self.subsystem, "sub": self.subsystem, "aud": self.gateway_code}
            self._token = tokens.sign(self.key, kid, claims, lifetime=self.token_lifetime, now=now)
            self._token_exp = now + self.token_lifetime
        return self._token

    def headers(self, purpose: str, **extra: str | None) -> dict[str, str]:
        # lienthong's own client: refusals as problem details at lienthong's precise status (docs/protocol.md §6)
        out = {"X-Road-Client": self.subsystem, "X-Purpose": purpose, "Accept": PROBLEM_ACCEPT}
        if self.key is not None:
            out["Authorization"] = f"Bearer {self.token()}"
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
        assert self.http is not None  # set by __post_init__
        return self.http.request(method.upper(), url, headers=headers, content=content, params=params)

    def close(self) -> None:
        if self.http is not None:
            self.http.close()
