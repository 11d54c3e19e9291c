"""The registry's signed snapshot (protocol §7), verified and indexed for constant-time lookups on the hot path.

The registry writes it, gateways and connectors read it; this module is the one reader.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Any

import jwt
import orjson

from lienthong.keys import PublicKey, public_key_from_jwk
from lienthong.subjects import SubjectSpec, parse_declaration


class SnapshotError(Exception):
    """The snapshot failed its signature or shape check."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    method: str
    path: str
    enabled: bool
    operation_id: str | None = None
    summary: str | None = None
    subject_param: str | None = None
    subjects: SubjectSpec | None = None  # where its data subjects sit, parsed once (lienthong/subjects.py)
    pattern: re.Pattern[str] | None = None
    static: bool = True


@dataclass(slots=True)
class Service:
    id: str
    provider: str
    code: str
    gateway: str
    approved: bool
    timeout_ms: int
    endpoints: list[Endpoint]
    doc: dict[str, Any]
    static_routes: dict[tuple[str, str], Endpoint] = field(default_factory=dict)
    templated: list[Endpoint] = field(default_factory=list)

    def match(self, method: str, path: str) -> tuple[Endpoint, dict[str, str]] | None:
        """Find the endpoint for a request path: a dict hit for static paths, else the (few) templates."""
        hit = self.static_routes.get((method, path))
        if hit is not None:
            return hit, {}
        for ep in self.templated:
            if ep.method == method and ep.pattern is not None:
                m = ep.pattern.match(path)
                if m:
                    return ep, m.groupdict()
        return None


@dataclass(frozen=True, slots=True)
class Grant:
    id: str
    consumer: str
    service: str
    endpoints: frozenset[tuple[str, str]] | None  # None: every endpoint
    purposes: frozenset[str]
    fields: tuple[str, ...] | None  # None: every field
    per_minute: int | None
    per_day: int | None
    revoked: bool

    def allows(self, method: str, path_template: str, purpose: str | None) -> bool:
        if self.revoked or purpose is None or purpose not in self.purposes:
            return False
        return self.endpoints is None or (method, path_template) in self.endpoints


_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


def template_pattern(path: str) -> re.Pattern[str]:
    """/persons/{id} -> ^/persons/(?P<id>[^/]+)$ ; a parameter never spans a '/'."""
    out, pos = ["^"], 0
    for m in _PARAM.finditer(path):
        out.append(re.escape(path[pos : m.start()]))
        out.append(f"(?P<{m.group(1)}>[^/]+)")
        pos = m.end()
    out.append(re.escape(path[pos:]) + "$")
    return re.compile("".join(out))


class Snapshot:
    """An indexed, read-only view of one snapshot document; swap whole objects, never mutate one."""

    def __init__(self, doc: dict[str, Any], *, received_at: float | None = None) -> None:
        self.doc = doc
        self.version: int = int(doc["version"])
        self.gateway: str | None = doc.get("gateway")
        self.received_at = received_at if received_at is not None else time.time()
        self.members: dict[str, dict[str, Any]] = {m["id"]: m for m in doc.get("members", [])}
        self.subsystems: dict[str, dict[str, Any]] = {s["id"]: s for s in doc.get("subsystems", [])}
        self.gateways: dict[str, dict[str, Any]] = {g["code"]: g for g in doc.get("gateways", [])}
        self.upstreams: dict[str, str] = dict(doc.get("upstreams", {}))
        self.gateway_keys: dict[str, tuple[str, PublicKey]] = {}
        for gw in doc.get("gateways", []):
            for jwk in gw.get("keys", []):
                if not jwk.get("revoked"):
                    self.gateway_keys[jwk["kid"]] = (gw["code"], public_key_from_jwk(jwk))
        self.client_keys: dict[str, tuple[str, PublicKey]] = {}
        for client in doc.get("clients", []):
            for jwk in client.get("keys", []):
                if not jwk.get("revoked"):
                    self.client_keys[jwk["kid"]] = (client["subsystem"], public_key_from_jwk(jwk))
        self.services: dict[str, Service] = {s["id"]: _service(s) for s in doc.get("services", [])}
        self.grants: dict[tuple[str, str], list[Grant]] = {}
        for g in doc.get("grants", []):
            grant = _grant(g)
            if not grant.revoked:
                self.grants.setdefault((grant.consumer, grant.service), []).append(grant)

    def age(self, now: float | None = None) -> float:
        return (now if now is not None else time.time()) - self.received_at

    def home_gateway(self, subsystem: str) -> str | None:
        member = subsystem.rsplit("/", 1)[0]
        m = self.members.get(member)
        return m.get("home_gateway") if m else None

    def find_grant(self, consumer: str, service: str, method: str, template: str, purpose: str | None) -> Grant | None:
        for grant in self.grants.get((consumer, service), ()):
            if grant.allows(method, template, purpose):
                return grant
        return None


def _service(s: dict[str, Any]) -> Service:
    endpoints = []
    for e in s.get("endpoints", []):
        static = "{" not in e["path"]
        endpoints.append(
            Endpoint(
                method=e["method"].upper(),
                path=e["path"],
                enabled=bool(e.get("enabled", True)),
                operation_id=e.get("operation_id"),
                summary=e.get("summary"),
                subject_param=e.get("subject_param"),
                subjects=parse_declaration(e),
                pattern=None if static else template_pattern(e["path"]),
                static=static,
            )
        )
    service = Service(
        id=s["id"],
        provider=s["provider"],
        code=s["code"],
        gateway=s["gateway"],
        approved=bool(s.get("approved")),
        timeout_ms=int(s.get("timeout_ms") or 5000),
        endpoints=endpoints,
        doc=s,
    )
    service.static_routes = {(e.method, e.path): e for e in endpoints if e.static}
    service.templated = [e for e in endpoints if not e.static]
    return service


def _grant(g: dict[str, Any]) -> Grant:
    eps = g.get("endpoints", "*")
    quota = g.get("quota") or {}
    fields = g.get("fields")
    return Grant(
        id=g["id"],
        consumer=g["consumer"],
        service=g["service"],
        endpoints=None if eps == "*" else frozenset((e["method"].upper(), e["path"]) for e in eps),
        purposes=frozenset(g.get("purposes", [])),
        fields=None if fields is None else tuple(fields),
        per_minute=quota.get("per_minute"),
        per_day=quota.get("per_day"),
        revoked=bool(g.get("revoked")),
    )


def verify_jws(token: bytes | str, registry_key: PublicKey) -> dict[str, Any]:
    """Check the registry's signature on a snapshot and return its document."""
    try:
        payload = jwt.api_jws.decode(token, registry_key, algorithms=["EdDSA", "ES256"])
    except jwt.PyJWTError as exc:
        raise SnapshotError(f"snapshot signature check failed: {exc}") from exc
    try:
        doc: dict[str, Any] = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise SnapshotError("snapshot payload is not JSON") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("version"), int):
        raise SnapshotError("snapshot payload has no integer version")
    return doc
