"""The entries of a registry snapshot (protocol §7): each one checked and built on its own, so that one bad entry is
quarantined alone (lienthong.snapshot). Also the path template grammar that registry and gateways share (§2)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, cast

from lienthong.keys import PublicKey, public_key_from_jwk
from lienthong.subjects import SubjectSpec, parse_declaration

# A gateway's own bounds on one service, whatever the registry let through: a larger service is quarantined rather
# than compiled (the registry's per-service limits are lower; these only stop a snapshot from a buggy registry).
MAX_ENDPOINTS = 2000
MAX_TEMPLATE_LENGTH = 1024
METHODS = frozenset({"GET", "PUT", "POST", "DELETE", "PATCH", "HEAD", "OPTIONS", "TRACE"})
DEFAULT_TIMEOUT_MS = 5000
MAX_TIMEOUT_MS = 600_000


class SnapshotError(Exception):
    """The snapshot failed its signature or shape check."""


class EntryError(ValueError):
    """One entry of a snapshot cannot be built; it is quarantined, the rest of the snapshot installs."""


QUARANTINE_KINDS = ("service", "grant", "client", "key", "gateway", "member", "subsystem", "upstream", "section")


@dataclass(frozen=True, slots=True)
class Quarantined:
    """An entry left out of the snapshot in use: `kind` is one of QUARANTINE_KINDS (a `key` is a kid two owners
    claim); `id` its id (or `services[3]` when it has none usable); `reason` why."""

    kind: str
    id: str
    reason: str


@dataclass(frozen=True, slots=True)
class Endpoint:
    method: str
    path: str
    enabled: bool
    operation_id: str | None = None
    summary: str | None = None
    subject_param: str | None = None
    subjects: SubjectSpec | None = None  # where its data subjects sit, parsed once (lienthong/subjects.py)
    no_data: frozenset[int] = frozenset()  # the provider's statuses that mean "no data" (x-lienthong-no-data)
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
    # templates by (method, number of '/'): a call scans only those of its own shape, however many the service has
    templated_index: dict[tuple[str, int], list[Endpoint]] = field(default_factory=dict)

    def match(self, method: str, path: str) -> tuple[Endpoint, dict[str, str]] | None:
        """Find the endpoint for a request path: a dict hit for static paths, else the templates of its shape."""
        hit = self.static_routes.get((method, path))
        if hit is not None:
            return hit, {}
        for ep in self.templated_index.get((method, path.count("/")), ()):
            if ep.pattern is not None:
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
    default_purpose: str | None = None  # one of purposes, named by the registry; see implied_purpose
    disclosure_delay_days: int = 0  # the data tracker withholds accesses under this grant this long (issue 19)
    disclose_user: bool = False  # the data tracker may name the official (the call's user id)
    # The purpose a call without X-Purpose gets under this grant (X-Road clients send none): the default purpose,
    # else the only purpose; None when the grant names several and no default. Computed once per snapshot.
    implied_purpose: str | None = None

    def covers(self, method: str, path_template: str) -> bool:
        return not self.revoked and (self.endpoints is None or (method, path_template) in self.endpoints)

    def allows(self, method: str, path_template: str, purpose: str | None) -> bool:
        return purpose is not None and purpose in self.purposes and self.covers(method, path_template)


# -- path templates (protocol §2) -------------------------------------------------------------------------------
# The one template grammar: the registry refuses at registration exactly what a gateway would quarantine here
# (registry/path_templates.py calls template_names), so the two can never disagree about a template.

_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_BRACED = re.compile(r"\{[^{}]*\}")  # shaped like a parameter, whatever its name
# A segment is literal RFC 3986 pchar text (no '%': templates are matched against decoded paths) or one {param}.
_LITERAL_SEGMENT = re.compile(r"[A-Za-z0-9._~!$&'()*+,;=:@-]+")


def template_names(path: object) -> list[str]:
    """Check a template's syntax and return its parameter names in order; raise EntryError naming the flaw.

    '/' alone, or '/'-separated segments, each literal text or exactly one {name}; no empty, '.' or '..' segment
    (a call could step out of its endpoint after decoding); a parameter name at most once (it names a regex group).
    Segments are matched whole (fullmatch): a trailing newline is no more allowed than anything else.
    """
    if not isinstance(path, str):
        raise EntryError(f"path {show(path)} is not a string")
    if not path.startswith("/"):
        raise EntryError(f"path {show(path)} does not start with '/'")
    if len(path) > MAX_TEMPLATE_LENGTH:
        raise EntryError(f"path {show(path)} is longer than {MAX_TEMPLATE_LENGTH} characters")
    if path == "/":
        return []
    names: list[str] = []
    for segment in path[1:].split("/"):
        param = _PARAM.fullmatch(segment)
        if param is not None:
            if param.group(1) in names:
                raise EntryError(f"path {show(path)} names the parameter {param.group(1)!r} twice")
            names.append(param.group(1))
        elif segment in ("", ".", ".."):
            raise EntryError(f"path {show(path)} has an invalid segment {show(segment)}: none is empty, '.' or '..'")
        elif _BRACED.fullmatch(segment):
            raise EntryError(f"path {show(path)} has an invalid segment {show(segment)}: a parameter name is an "
                             "identifier ([A-Za-z_][A-Za-z0-9_]*)")  # fmt: skip
        elif not _LITERAL_SEGMENT.fullmatch(segment):
            raise EntryError(f"path {show(path)} has an invalid segment {show(segment)}: neither literal path text "
                             "(no '%', '{', '}', spaces or non-ASCII) nor exactly one {name}")  # fmt: skip
    return names


def check_template(path: object) -> str:
    """The template itself, once template_names found nothing wrong with it (a snapshot endpoint's path)."""
    template_names(path)
    return cast(str, path)  # template_names refuses anything but a str


def template_pattern(path: str) -> re.Pattern[str]:
    """/persons/{id} -> ^/persons/(?P<id>[^/]+)$ ; a parameter never spans a '/'."""
    out, pos = ["^"], 0
    for m in _PARAM.finditer(path):
        out.append(re.escape(path[pos : m.start()]))
        out.append(f"(?P<{m.group(1)}>[^/]+)")
        pos = m.end()
    out.append(re.escape(path[pos:]) + "$")
    return re.compile("".join(out))


# -- the snapshot -----------------------------------------------------------------------------------------------


# -- entries -----------------------------------------------------------------------------------------------------


def build_service(s: dict[str, Any]) -> Service:
    endpoints = _list(s, "endpoints")
    if len(endpoints) > MAX_ENDPOINTS:
        raise EntryError(f"{len(endpoints)} endpoints, more than a gateway compiles for one service ({MAX_ENDPOINTS})")
    built = [build_endpoint(e) for e in endpoints]
    timeout_ms = s.get("timeout_ms")
    if timeout_ms is None:
        timeout_ms = DEFAULT_TIMEOUT_MS
    elif not isinstance(timeout_ms, int) or isinstance(timeout_ms, bool) or not 0 < timeout_ms <= MAX_TIMEOUT_MS:
        raise EntryError(f"timeout_ms {show(timeout_ms)} is not an integer from 1 to {MAX_TIMEOUT_MS}")
    service = Service(
        id=ident(s, "id"),
        provider=ident(s, "provider"),
        code=ident(s, "code"),
        gateway=ident(s, "gateway"),
        approved=_flag(s, "approved", False),
        timeout_ms=timeout_ms,
        endpoints=built,
        doc=s,
    )
    service.static_routes = {(e.method, e.path): e for e in built if e.static}
    service.templated = [e for e in built if not e.static]
    for e in service.templated:
        service.templated_index.setdefault((e.method, e.path.count("/")), []).append(e)
    return service


def no_data_statuses(value: object) -> frozenset[int]:
    """An endpoint's `no_data` (its `x-lienthong-no-data`): HTTP statuses 400-499, else ValueError. The registry
    checks a document with this same rule, so a gateway quarantines only what a buggy registry let through."""
    if value is None:
        return frozenset()
    if not isinstance(value, list) or not all(type(s) is int and 400 <= s <= 499 for s in value):  # no bool
        raise ValueError(f"no_data {show(value)} is not a list of HTTP statuses 400-499")
    return frozenset(value)


def build_endpoint(e: Any) -> Endpoint:
    if not isinstance(e, dict):
        raise EntryError(f"endpoint {show(e)} is not an object")
    method = e.get("method")
    if not isinstance(method, str) or method.upper() not in METHODS:
        raise EntryError(f"endpoint method {show(method)} is not an HTTP method")
    path = check_template(e.get("path"))
    static = "{" not in path
    return Endpoint(
        method=method.upper(),
        path=path,
        enabled=_flag(e, "enabled", True),
        operation_id=_text(e, "operation_id"),
        summary=_text(e, "summary"),
        subject_param=_text(e, "subject_param"),
        subjects=parse_declaration(e),  # a malformed declaration quarantines the service
        no_data=no_data_statuses(e.get("no_data")),
        pattern=None if static else template_pattern(path),
        static=static,
    )


def build_grant(g: Any) -> Grant:
    grant_id = ident(g, "id")
    eps = g.get("endpoints", "*")
    endpoints: frozenset[tuple[str, str]] | None = None
    if eps != "*":
        pairs = []
        for e in _list(g, "endpoints"):
            if not isinstance(e, dict) or not isinstance(e.get("method"), str) or not isinstance(e.get("path"), str):
                raise EntryError(f"grant endpoint {show(e)} is not a method and path")
            pairs.append((e["method"].upper(), e["path"]))
        endpoints = frozenset(pairs)
    quota = g.get("quota") or {}
    if not isinstance(quota, dict):
        raise EntryError(f"quota {show(quota)} is not an object")
    fields = g.get("fields")
    purposes = frozenset(_strings(g, "purposes"))
    default = _text(g, "default_purpose")
    if default is not None and default not in purposes:
        raise EntryError(f"default_purpose {show(default)} is not one of the grant's purposes")
    return Grant(
        id=grant_id,
        consumer=ident(g, "consumer"),
        service=ident(g, "service"),
        endpoints=endpoints,
        purposes=purposes,
        fields=None if fields is None else tuple(_strings(g, "fields")),
        per_minute=_count(quota, "per_minute"),
        per_day=_count(quota, "per_day"),
        revoked=_flag(g, "revoked", False),
        default_purpose=default,
        disclosure_delay_days=_count(g, "disclosure_delay_days") or 0,
        disclose_user=_flag(g, "disclose_user", False),
        implied_purpose=default if default is not None else next(iter(purposes)) if len(purposes) == 1 else None,
    )


# -- field checks: each raises EntryError naming the field ---------------------------------------------------------


def ident(entry: Any, key: str) -> str:
    if not isinstance(entry, dict):
        raise EntryError(f"entry {show(entry)} is not an object")
    value = entry.get(key)
    if not isinstance(value, str) or not value:
        raise EntryError(f"{key} {show(value)} is not a non-empty string")
    return value


def _list(entry: dict[str, Any], key: str) -> list[Any]:
    value = entry.get(key, [])
    if not isinstance(value, list):
        raise EntryError(f"{key} {show(value)} is not a list")
    return value


def _strings(entry: dict[str, Any], key: str) -> list[str]:
    values = _list(entry, key)
    for value in values:  # a plain loop: all() over a generator costs a grant-heavy cold start a tenth more
        if not isinstance(value, str):
            raise EntryError(f"{key} {show(values)} is not a list of strings")
    return values


def _flag(entry: dict[str, Any], key: str, default: bool) -> bool:
    value = entry.get(key, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise EntryError(f"{key} {show(value)} is not true or false")
    return value


def _text(entry: dict[str, Any], key: str) -> str | None:
    value = entry.get(key)
    if value is not None and not isinstance(value, str):
        raise EntryError(f"{key} {show(value)} is not a string")
    return value


def _count(entry: dict[str, Any], key: str) -> int | None:
    value = entry.get(key)
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
        raise EntryError(f"{key} {show(value)} is not a count")
    return value


def entry_keys(entry: dict[str, Any]) -> dict[str, PublicKey | None]:
    """kid -> key for each of the entry's keys, None for a revoked one; any malformed key refuses the entry."""
    out: dict[str, PublicKey | None] = {}
    for jwk in _list(entry, "keys"):
        if not isinstance(jwk, dict):
            raise EntryError(f"key {show(jwk)} is not a JWK object")
        out[ident(jwk, "kid")] = None if _flag(jwk, "revoked", False) else public_key_from_jwk(jwk)
    return out


_SERIAL = re.compile(r"[0-9a-f]{1,40}")  # a certificate serial is at most 20 octets (RFC 5280 §4.1.2.2)


def parse_pki(value: Any) -> tuple[tuple[str, ...], frozenset[int]]:
    """The snapshot's `pki` section as (CA PEMs, revoked serials); EntryError naming the first flaw."""
    from cryptography import x509  # imported here: only a snapshot with a pki section pays for it

    if not isinstance(value, dict):
        raise EntryError(f"pki {show(value)} is not an object")
    cas, revoked = value.get("ca", []), value.get("revoked", [])
    if not isinstance(cas, list) or not isinstance(revoked, list):
        raise EntryError("pki.ca and pki.revoked must be lists")
    for i, pem in enumerate(cas):
        try:
            x509.load_pem_x509_certificate(pem.encode() if isinstance(pem, str) else b"")
        except ValueError:
            raise EntryError(f"pki.ca[{i}] {show(pem)} is not a PEM certificate") from None
    for i, serial in enumerate(revoked):
        if not isinstance(serial, str) or not _SERIAL.fullmatch(serial):
            raise EntryError(f"pki.revoked[{i}] {show(serial)} is not a lowercase hex serial")
    return tuple(cas), frozenset(int(s, 16) for s in revoked)


def why(exc: Exception) -> str:
    return str(exc) if isinstance(exc, EntryError) else f"{type(exc).__name__}: {exc}"


def show(value: Any) -> str:
    """A bounded repr for log lines and problem details: garbage can be megabytes long."""
    return clip(repr(value), 80)


def clip(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
