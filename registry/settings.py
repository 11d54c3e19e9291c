"""The registry's operator settings: the upstream allowlist and the per-service and per-member limits.

Each comes from a `lienthong registry serve` option or its environment variable; the defaults are safe for a mesh of
85 organisations (issue 13, High 4 and 5).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from lienthong.snapshot import MAX_ENDPOINTS
from lienthong.upstream_policy import AllowEntry, PolicyError, parse_allow

DEFAULT_MAX_ENDPOINTS = 500
DEFAULT_MAX_DOCUMENT_BYTES = 256 * 1024
DEFAULT_MAX_SERVICES_PER_MEMBER = 200

ENV_UPSTREAM_ALLOW = "LIENTHONG_UPSTREAM_ALLOW"
ENV_MAX_ENDPOINTS = "LIENTHONG_MAX_ENDPOINTS"
ENV_MAX_DOCUMENT_BYTES = "LIENTHONG_MAX_DOCUMENT_BYTES"
ENV_MAX_SERVICES_PER_MEMBER = "LIENTHONG_MAX_SERVICES_PER_MEMBER"


@dataclass(frozen=True, slots=True)
class RegistrySettings:
    upstream_allow: tuple[AllowEntry, ...] = ()
    max_endpoints: int = DEFAULT_MAX_ENDPOINTS  # per service
    max_document_bytes: int = DEFAULT_MAX_DOCUMENT_BYTES  # a service's OpenAPI document, as compact JSON
    max_services_per_member: int = DEFAULT_MAX_SERVICES_PER_MEMBER
    listen: tuple[str, int] | None = None  # where this registry listens: refused as an upstream

    def __post_init__(self) -> None:
        for name in ("max_endpoints", "max_document_bytes", "max_services_per_member"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        # a gateway quarantines a service with more endpoints than it compiles: the registry may not accept one
        if self.max_endpoints > MAX_ENDPOINTS:
            raise ValueError(
                f"max_endpoints (--max-endpoints, {ENV_MAX_ENDPOINTS}) is {self.max_endpoints}, but a gateway "
                f"compiles at most {MAX_ENDPOINTS} endpoints per service and quarantines a larger one"
            )

    @classmethod
    def from_options(
        cls,
        upstream_allow: str | None,
        max_endpoints: int | None,
        max_document_bytes: int | None,
        max_services_per_member: int | None,
        listen: tuple[str, int] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> RegistrySettings:
        """Options win over the environment, the environment over the defaults; a bad value raises ValueError."""
        e = os.environ if env is None else env

        def number(value: int | None, name: str, default: int) -> int:
            if value is not None:
                return value
            text = e.get(name)
            if not text:
                return default
            try:
                return int(text)
            except ValueError:
                raise ValueError(f"{name} must be a whole number, not {text!r}") from None

        allow_text = upstream_allow if upstream_allow is not None else e.get(ENV_UPSTREAM_ALLOW, "")
        try:
            allow = parse_allow(allow_text)
        except PolicyError as exc:
            raise ValueError(f"upstream allowlist: {exc}") from exc
        return cls(
            upstream_allow=allow,
            max_endpoints=number(max_endpoints, ENV_MAX_ENDPOINTS, DEFAULT_MAX_ENDPOINTS),
            max_document_bytes=number(max_document_bytes, ENV_MAX_DOCUMENT_BYTES, DEFAULT_MAX_DOCUMENT_BYTES),
            max_services_per_member=number(
                max_services_per_member, ENV_MAX_SERVICES_PER_MEMBER, DEFAULT_MAX_SERVICES_PER_MEMBER
            ),
            listen=listen,
        )
