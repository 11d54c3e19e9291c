"""A small mesh world for the policy tests: keys, a snapshot built from a dict, and CallContexts (no tests here)."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from lienthong.keys import PrivateKey, generate, public_jwk
from lienthong.snapshot import Snapshot
from lienthong.tokens import sign
from policies.base import CallContext, Role

CONSUMER = "VN/PROV/NGHEAN/civil-status"
OTHER_CONSUMER = "VN/PROV/HANOI/civil-status"
SERVICE = "VN/GOV/BCA/population/persons"
PERSON_ID = "040203004567"


@dataclass
class World:
    client_key: PrivateKey = field(default_factory=generate)
    revoked_key: PrivateKey = field(default_factory=generate)
    other_client_key: PrivateKey = field(default_factory=generate)
    gateway_keys: dict[str, PrivateKey] = field(default_factory=dict)
    grant_fields: list[str] | None = field(default_factory=lambda: ["id", "full_name", "household.id"])
    quota: dict[str, int] = field(default_factory=lambda: {"per_minute": 600, "per_day": 100000})
    version: int = 1

    def __post_init__(self) -> None:
        for code in ("national", "nghean", "hanoi"):
            self.gateway_keys[code] = generate()

    def doc(self, *, revoke_client_key: bool = False, approved: bool = True, enabled: bool = True) -> dict[str, Any]:
        return {
            "version": self.version,
            "instance": "VN",
            "gateway": "national",
            "generated_at": "2026-11-23T07:00:00Z",
            "members": [
                {"id": "VN/GOV/BCA", "name": "BCA", "home_gateway": "national", "version": 1},
                {"id": "VN/PROV/NGHEAN", "name": "Nghe An", "home_gateway": "nghean", "version": 1},
                {"id": "VN/PROV/HANOI", "name": "Ha Noi", "home_gateway": "hanoi", "version": 1},
            ],
            "subsystems": [],
            "gateways": [
                {"code": c, "base_url": "http://127.0.0.1:1", "keys": [public_jwk(k, kid=f"gw-{c}")], "version": 1}
                for c, k in self.gateway_keys.items()
            ],
            "services": [
                {
                    "id": SERVICE,
                    "provider": "VN/GOV/BCA/population",
                    "code": "persons",
                    "version_label": "v1",
                    "gateway": "national",
                    "approved": approved,
                    "timeout_ms": 5000,
                    "endpoints": [
                        {"method": "GET", "path": "/persons/{id}", "enabled": enabled, "subject_param": "id"},
                        {"method": "GET", "path": "/persons", "enabled": True, "subject_param": "id"},
                        {"method": "POST", "path": "/persons", "enabled": True},
                    ],
                    "version": 1,
                }
            ],
            "upstreams": {SERVICE: "http://127.0.0.1:1"},
            "clients": [
                {
                    "subsystem": CONSUMER,
                    "keys": [
                        {**public_jwk(self.client_key, kid="client-1"), "revoked": False},
                        {**public_jwk(self.revoked_key, kid="client-old"), "revoked": True},
                        {**public_jwk(self.client_key, kid="client-2"), "revoked": revoke_client_key},
                    ],
                },
                {"subsystem": OTHER_CONSUMER, "keys": [{**public_jwk(self.other_client_key, kid="other-1")}]},
            ],
            "grants": [
                {
                    "id": "g-1",
                    "consumer": CONSUMER,
                    "service": SERVICE,
                    "endpoints": [{"method": "GET", "path": "/persons/{id}"}, {"method": "GET", "path": "/persons"}],
                    "purposes": ["birth-registration"],
                    "fields": self.grant_fields,
                    "quota": self.quota,
                    "revoked": False,
                    "version": 1,
                }
            ],
        }

    def snapshot(self, **kw: Any) -> Snapshot:
        return Snapshot(self.doc(**kw))

    def client_token(self, *, kid: str = "client-1", key: PrivateKey | None = None, **claims: Any) -> str:
        body = {"iss": CONSUMER, "sub": CONSUMER, "aud": "national", **claims}
        lifetime = int(body.pop("lifetime", 60))
        return sign(key or self.client_key, kid, body, lifetime=lifetime)

    def assertion(self, *, signer: str = "nghean", aud: str = "national", lifetime: int = 20, **claims: Any) -> str:
        body = {
            "iss": signer,
            "aud": aud,
            "sub": CONSUMER,
            "svc": SERVICE,
            "purpose": "birth-registration",
            "grant": "g-1",
            "jti": uuid.uuid4().hex,
            **claims,
        }
        return sign(self.gateway_keys[signer], f"gw-{signer}", body, lifetime=lifetime)


def context(
    snapshot: Snapshot,
    *,
    role: Role = "local",
    headers: dict[str, str] | None = None,
    method: str = "GET",
    path: str = f"/persons/{PERSON_ID}",
    gateway: str = "national",
) -> CallContext:
    """A context as the router leaves it before access: service, endpoint and path parameters resolved."""
    ctx = CallContext(
        gateway=gateway,
        transaction_id=uuid.uuid4().hex,
        method=method,
        path=path,
        query=b"",
        headers={k.lower(): v for k, v in (headers or {}).items()},
        body=b"",
        snapshot=snapshot,
        role=role,
        service_id=SERVICE,
    )
    service = snapshot.services[SERVICE]
    ctx.service = service
    matched = service.match(method, path)
    if matched is not None:
        ctx.endpoint, ctx.path_params = matched
    ctx.request_in = time.time()
    return ctx


def client_headers(token: str, client: str = CONSUMER, purpose: str = "birth-registration") -> dict[str, str]:
    return {"authorization": f"Bearer {token}", "x-road-client": client, "x-purpose": purpose}
