"""The registry's signed snapshot (protocol §7), verified and indexed for constant-time lookups on the hot path.

The registry writes it, gateways and connectors read it; this module is the one reader. Nothing inside a signed
snapshot may stop a gateway from taking it (issue 13): an entry this reader cannot build (a service whose path
template does not compile, a grant or client key of the wrong shape, a section that is not a list) is left out and
listed in `Snapshot.quarantined`, and the rest installs. Leaving an entry out always fails closed: a quarantined
service answers 503 `service-quarantined`, a quarantined grant grants nothing, a quarantined key verifies nothing.

A Snapshot is built from a full document, or from the one before it and a delta (`apply`, protocol §7.2): a full
document is applied as the delta from nothing, so both take one path. `apply` copies the indexes, then rebuilds only
the entries the delta names; a service whose entry did not change keeps its compiled routes.
"""

from __future__ import annotations

import binascii
import contextlib
import gc
import threading
import time
from collections.abc import Iterator
from typing import Any

import orjson
from jwt.algorithms import get_default_algorithms

from lienthong.keys import PublicKey
from lienthong.snapshot_entries import (
    MAX_ENDPOINTS,
    MAX_TEMPLATE_LENGTH,
    QUARANTINE_KINDS,
    Endpoint,
    EntryError,
    Grant,
    Quarantined,
    Service,
    SnapshotError,
    build_grant,
    build_service,
    check_template,
    clip,
    entry_keys,
    ident,
    parse_pki,
    show,
    template_names,
    template_pattern,
    why,
)
from lienthong.upstream_policy import UpstreamPolicy

__all__ = [
    "MAX_ENDPOINTS", "MAX_TEMPLATE_LENGTH", "QUARANTINE_KINDS", "SECTIONS", "Endpoint", "EntryError", "Grant",
    "Quarantined", "Service", "Snapshot", "SnapshotError", "check_template", "template_names", "template_pattern",
    "verify_jws",
]  # fmt: skip

# section -> (the field that identifies an entry, the quarantine kind of an entry), in the order they are applied
SECTIONS: dict[str, tuple[str, str]] = {
    "members": ("id", "member"),
    "subsystems": ("id", "subsystem"),
    "gateways": ("code", "gateway"),
    "clients": ("subsystem", "client"),
    "services": ("id", "service"),
    "grants": ("id", "grant"),
}
HEADER = ("version", "instance", "gateway", "generated_at", "config")
# the indexes a change to a section writes (the key indexes are rebuilt whole, the owners copied always: small)
COPIED: dict[str, tuple[str, ...]] = {
    "members": ("members",), "subsystems": ("subsystems",), "gateways": ("gateways",), "clients": (),
    "services": ("services", "_built"), "grants": ("grants", "_grant_at"), "upstreams": ("upstreams",),
}  # fmt: skip

Owner = tuple[Any, dict[str, PublicKey | None]]  # (entry, its keys: None for a revoked one)


class Snapshot:
    """An indexed, read-only view of one snapshot version; `apply` returns a new one, never mutates this one.

    `previous` is the snapshot a full document replaces: a service whose entry is unchanged keeps its compiled Service
    (or its quarantine) instead of being built again, so a new version costs what changed in it, not its size.
    """

    def __init__(
        self, doc: dict[str, Any], *, received_at: float | None = None, previous: Snapshot | None = None
    ) -> None:
        self._head(doc, received_at)
        self._quarantine_map: dict[tuple[str, str], Quarantined] = {}
        self.quarantined_services: dict[str, str] = {}  # service id -> the detail its calls' 503 carries
        self.members: dict[str, dict[str, Any]] = {}
        self.subsystems: dict[str, dict[str, Any]] = {}
        self.gateways: dict[str, dict[str, Any]] = {}
        self.gateway_keys: dict[str, tuple[str, PublicKey]] = {}
        self.client_keys: dict[str, tuple[str, PublicKey]] = {}
        self.upstreams: dict[str, str] = {}
        self.services: dict[str, Service] = {}
        self.grants: dict[tuple[str, str], list[Grant]] = {}
        self._grant_at: dict[str, Grant] = {}  # grant id -> its indexed Grant, to take it out again
        self._built: dict[str, tuple[Any, Service | str]] = {}  # service id -> (its entry, Service or why not)
        self._owners: dict[str, dict[str, Owner]] = {"gateways": {}, "clients": {}}  # key owners, by section
        self._policy = doc.get("upstream_policy")
        self.ca_pems: tuple[str, ...] = ()  # the mesh CA certificates (protocol §9)
        self.revoked_serials: frozenset[int] = frozenset()
        self.upstream_policy = UpstreamPolicy.from_snapshot({})
        changes: dict[str, dict[str, Any]] = {}
        for section, (id_key, kind) in SECTIONS.items():
            entries = changes[section] = {}
            for index, entry in self._section(doc, section, list):
                try:
                    entries[ident(entry, id_key)] = entry  # a later entry with the same id wins, bad or good
                except EntryError as exc:
                    self._quarantine(kind, f"{section}[{index}]", why(exc))
        if previous is not None:  # reused by entry equality only: nothing else carries over from it
            self._built = dict(previous._built)
        self._apply(changes, dict(self._section(doc, "upstreams", dict)), doc.get("pki", {}), full=True)
        if previous is not None:
            self._built = {sid: self._built[sid] for sid in changes["services"] if sid in self._built}

    def _head(self, doc: dict[str, Any], received_at: float | None) -> None:
        self.doc = {k: doc[k] for k in HEADER if k in doc}  # the header only: the entries are in the indexes
        self.version: int = int(doc["version"])
        self.gateway: str | None = doc.get("gateway")
        self.received_at = received_at if received_at is not None else time.time()

    def apply(self, delta: dict[str, Any], *, received_at: float | None = None) -> Snapshot:
        """The next version: this one with a verified delta applied (protocol §7.2). Raises SnapshotError, and
        changes nothing, when the delta does not start at this version or its shape is wrong: the gateway then asks
        for a full snapshot. An entry the delta brings that cannot be built is quarantined like any other."""
        if delta.get("from") != self.version or not isinstance(delta.get("version"), int):
            raise SnapshotError(f"the delta goes from version {delta.get('from')!r}, this gateway holds {self.version}")
        if delta["version"] <= self.version:
            raise SnapshotError(f"the delta ends at version {delta['version']}, not past {self.version}")
        if delta.get("gateway") != self.gateway:
            raise SnapshotError(f"the delta is for gateway {delta.get('gateway')!r}, not {self.gateway!r}")
        if delta.get("config") != self.doc.get("config"):
            raise SnapshotError("the registry's configuration changed since the snapshot held; a full one is needed")
        changes, upstreams = delta.get("changes"), delta.get("upstreams", {})
        if not isinstance(changes, dict) or not isinstance(upstreams, dict):
            raise SnapshotError("the delta's changes and upstreams must be JSON objects")
        for section in SECTIONS:
            if not isinstance(changes.get(section, {}), dict):
                raise SnapshotError(f"the delta's changes.{section} is not a JSON object")
        new = Snapshot.__new__(Snapshot)
        new.__dict__.update(self.__dict__)  # then each index the delta changes is copied before it is changed
        touched = {section for section in SECTIONS if changes.get(section)} | ({"upstreams"} if upstreams else set())
        for name in ("_quarantine_map", "quarantined_services", *(n for s in touched for n in COPIED.get(s, ()))):
            setattr(new, name, dict(getattr(self, name)))
        new._owners = {section: dict(owners) for section, owners in self._owners.items()}
        new._head({**self.doc, **{k: delta[k] for k in HEADER if k in delta}}, received_at)
        new._apply({s: changes.get(s, {}) for s in SECTIONS}, upstreams, delta.get("pki"), full=False)
        return new

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

    @property
    def quarantined(self) -> list[Quarantined]:
        return list(self._quarantine_map.values())

    # -- applying changes, one entry at a time --------------------------------------------------------------------

    def _apply(self, changes: dict[str, dict[str, Any]], upstreams: dict[str, Any], pki: Any, full: bool) -> None:
        """Set or (None) remove each named entry; each failure quarantines that entry alone."""
        for section, (id_key, kind) in SECTIONS.items():
            for ident_, entry in changes[section].items():
                if not full:  # a full document starts from nothing, its entries keyed by their own ids already
                    self._unquarantine(kind, ident_)
                    self._remove(section, ident_)
                    if entry is None:
                        if section == "services":
                            self._built.pop(ident_, None)
                        continue
                try:
                    if not full and ident(entry, id_key) != ident_:
                        raise EntryError(f"{id_key} {show(entry[id_key])} is not the id it is listed under")
                    self._add(section, ident_, entry)
                except Exception as exc:  # any failure, ours or a library's, quarantines only the entry
                    self._quarantine(kind, ident_, why(exc))
        if full or changes["gateways"] or changes["clients"]:
            self._index_keys()
        if full or changes["gateways"]:
            self.upstream_policy = UpstreamPolicy.from_snapshot(  # where connectors may point; never raises
                {"upstream_policy": self._policy, "gateways": list(self.gateways.values())}
            )
        for sid, url in upstreams.items():
            self._unquarantine("upstream", sid)
            self.upstreams.pop(sid, None)
            if isinstance(url, str):
                self.upstreams[sid] = url
            elif url is not None:
                self._quarantine("upstream", sid, f"upstream {show(url)} is not a URL string")
        if pki is not None:  # {} in a full document without the section: no CA, nothing revoked
            self._unquarantine("section", "pki")
            try:
                self.ca_pems, self.revoked_serials = parse_pki(pki) if pki != {} else ((), frozenset())
            except EntryError as exc:  # no CA and no revocation list: this gateway trusts no peer, not a revoked one
                self.ca_pems, self.revoked_serials = (), frozenset()
                self._quarantine("section", "pki", str(exc))

    def _remove(self, section: str, ident_: str) -> None:
        if section == "grants":
            old = self._grant_at.pop(ident_, None)
            if old is not None:
                key = (old.consumer, old.service)
                rest = [g for g in self.grants.get(key, ()) if g.id != ident_]  # a new list: readers hold the old
                if rest:
                    self.grants[key] = rest
                else:
                    self.grants.pop(key, None)
        elif section == "services":
            self.services.pop(ident_, None)
        elif section in self._owners:
            self._owners[section].pop(ident_, None)
            if section == "gateways":
                self.gateways.pop(ident_, None)
        else:
            getattr(self, section).pop(ident_, None)

    def _add(self, section: str, ident_: str, entry: dict[str, Any]) -> None:
        if section == "grants":
            grant = build_grant(entry)
            if not grant.revoked:
                key = (grant.consumer, grant.service)
                self.grants[key] = [*self.grants.get(key, ()), grant]
                self._grant_at[ident_] = grant
        elif section == "services":
            self._add_service(ident_, entry)
        elif section in self._owners:
            if section == "gateways" and not isinstance(entry.get("base_url", ""), str):
                raise EntryError(f"base_url {show(entry['base_url'])} is not a string")
            self._owners[section][ident_] = (entry, entry_keys(entry))  # a malformed key refuses the entry
            if section == "gateways":
                self.gateways[ident_] = entry
        else:
            if section == "members" and entry.get("home_gateway") is not None:
                if not isinstance(entry["home_gateway"], str):
                    raise EntryError(f"home_gateway {show(entry['home_gateway'])} is not a string")
            getattr(self, section)[ident_] = entry

    def _add_service(self, sid: str, entry: dict[str, Any]) -> None:
        before = self._built.get(sid)
        if before is not None and before[0] == entry:
            built = before[1]  # unchanged since the version before: neither compiled nor refused again
        else:
            try:
                built = build_service(entry)
            except Exception as exc:  # remembered, so that an unchanged bad entry is not rebuilt
                built = why(exc)
        self._built[sid] = (entry, built)
        if isinstance(built, str):
            raise EntryError(built)
        self.services[sid] = built

    def _index_keys(self) -> None:
        """Every owner's live keys, gateways first; a kid that two owners claim (revoked or not) verifies for
        neither. Rebuilt from the owners' parsed keys whenever one of them changes (a few thousand at most)."""
        for q in [q for q in self._quarantine_map if q[0] == "key"]:
            del self._quarantine_map[q]
        self.gateway_keys, self.client_keys = {}, {}
        claims: dict[str, str] = {}
        contested: set[str] = set()
        for section, into in (("gateways", self.gateway_keys), ("clients", self.client_keys)):
            for owner, (_entry, keys) in self._owners[section].items():
                claim = f"{section[:-1]} {owner}"
                for kid, key in keys.items():
                    claimed = claims.setdefault(kid, claim)
                    if claimed != claim or kid in contested:
                        contested.add(kid)
                        self.client_keys.pop(kid, None)
                        self.gateway_keys.pop(kid, None)
                        self._quarantine("key", kid, f"key {show(kid)} is claimed by {claimed} and by {claim}")
                    elif key is not None:
                        into[kid] = (owner, key)

    def _quarantine(self, kind: str, ident_: str, reason: str) -> None:
        reason = clip(reason)
        self._quarantine_map[(kind, ident_)] = Quarantined(kind, clip(ident_), reason)
        if kind == "service":
            self.quarantined_services[ident_] = f"service {clip(ident_)} is quarantined on this gateway: {reason}"

    def _unquarantine(self, kind: str, ident_: str) -> None:
        if self._quarantine_map.pop((kind, ident_), None) is not None and kind == "service":
            self.quarantined_services.pop(ident_, None)

    def _section(self, doc: dict[str, Any], section: str, kind: type) -> list[tuple[Any, Any]]:
        """(index, entry) of a list section or (key, value) of a dict one; a section of another type is empty."""
        value = doc.get(section)
        if value is None:
            return []
        if kind is dict and isinstance(value, dict):
            return list(value.items())
        if kind is list and isinstance(value, list):
            return list(enumerate(value))
        self._quarantine("section", section, f"section {section!r} is not a JSON {kind.__name__}")
        return []


_URLSAFE = bytes.maketrans(b"-_", b"+/")
ALGORITHMS = ("EdDSA", "ES256")


def _b64url(part: bytes, what: str) -> bytes:
    """Strict base64url (RFC 7515 §2): any character outside the alphabet is refused, in C (PyJWT checks a 46 MB
    snapshot's characters one by one in Python: seconds of a gateway's cold start, issue 17)."""
    try:
        return binascii.a2b_base64(part.translate(_URLSAFE) + b"=" * (-len(part) % 4), strict_mode=True)
    except binascii.Error as exc:
        raise SnapshotError(f"snapshot {what} is not base64url: {exc}") from None


_gc_lock = threading.Lock()
_gc_pauses = 0
_gc_was_enabled = True


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off while a snapshot is parsed and indexed: its million new objects, none
    of them garbage, make every collection rescan all of them, which took a third of a gateway's cold start and two
    thirds of the JSON parse (issue 17). Nested and concurrent pauses end with the last one."""
    global _gc_pauses, _gc_was_enabled
    with _gc_lock:
        if _gc_pauses == 0:
            _gc_was_enabled = gc.isenabled()
            gc.disable()
        _gc_pauses += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_pauses -= 1
            if _gc_pauses == 0 and _gc_was_enabled:
                gc.enable()


def verify_jws(token: bytes | str, registry_key: PublicKey) -> dict[str, Any]:
    """Check the registry's signature on one part of a snapshot (protocol §7.1) and return its payload: a compact
    JWS (RFC 7515 §7.1) whose header names EdDSA or ES256 and no `crit` extension."""
    raw = token.encode() if isinstance(token, str) else token
    parts = raw.split(b".")
    if len(parts) != 3:
        raise SnapshotError("snapshot signature check failed: not a compact JWS of three parts")
    try:
        header = orjson.loads(_b64url(parts[0], "header"))
    except orjson.JSONDecodeError:
        raise SnapshotError("snapshot signature check failed: the JWS header is not JSON") from None
    if not isinstance(header, dict) or header.get("alg") not in ALGORITHMS or "crit" in header:
        raise SnapshotError(f"snapshot signature check failed: algorithm {show(header)} is not one of {ALGORITHMS}")
    signature = _b64url(parts[2], "signature")
    try:
        valid = get_default_algorithms()[header["alg"]].verify(parts[0] + b"." + parts[1], registry_key, signature)
    except Exception as exc:  # a key of the other algorithm's type, say: no signature of ours
        raise SnapshotError(f"snapshot signature check failed: {type(exc).__name__}") from None
    if not valid:
        raise SnapshotError("snapshot signature check failed: the signature does not verify")
    try:
        doc: dict[str, Any] = orjson.loads(_b64url(parts[1], "payload"))
    except orjson.JSONDecodeError as exc:
        raise SnapshotError("snapshot payload is not JSON") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("version"), int):
        raise SnapshotError("snapshot payload has no integer version")
    return doc
