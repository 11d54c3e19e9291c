"""How a snapshot travels (protocol §7.1): one JSON envelope holding two compact JWS, the common part that every
gateway shares and the gateway's own part (its upstream URLs). A full snapshot and a delta travel the same way.

This module checks both signatures, that the two parts belong together (same kind, same versions, the part is for
this gateway) and merges them into the one document lienthong.snapshot reads. The registry writes envelopes
(registry/snapshot_builder.py); everyone who reads one comes here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import orjson

from lienthong.keys import PublicKey
from lienthong.snapshot import SnapshotError, verify_jws

Kind = Literal["full", "delta"]
KINDS: tuple[Kind, ...] = ("full", "delta")


@dataclass(frozen=True, slots=True)
class Opened:
    """A verified envelope: `doc` is the merged document (a full snapshot, or a delta for Snapshot.apply)."""

    kind: Kind
    version: int
    doc: dict[str, Any]


def open_envelope(body: bytes, registry_key: PublicKey, gateway: str | None = None) -> Opened:
    """Verify an envelope and merge its parts; SnapshotError names what does not hold. `gateway`, when given, is
    the gateway whose part it must be."""
    try:
        envelope = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise SnapshotError("the snapshot envelope is not JSON") from exc
    if not isinstance(envelope, dict) or envelope.get("kind") not in KINDS:
        raise SnapshotError("the snapshot envelope has no kind 'full' or 'delta'")
    if not isinstance(envelope.get("common"), str) or not isinstance(envelope.get("gateway"), str):
        raise SnapshotError("the snapshot envelope lacks its common or its gateway part")
    kind: Kind = envelope["kind"]
    common = verify_jws(envelope["common"], registry_key)
    own = verify_jws(envelope["gateway"], registry_key)
    for name, part, role in (("common", common, "common"), ("gateway", own, "gateway")):
        if part.get("part") != role or part.get("kind") != kind:
            raise SnapshotError(f"the envelope's {name} part is not the {role} part of a {kind} snapshot")
    if own.get("version") != common["version"] or own.get("from") != common.get("from"):
        raise SnapshotError("the envelope's two parts are of different versions")
    if not isinstance(own.get("gateway"), str) or (gateway is not None and own["gateway"] != gateway):
        raise SnapshotError(f"the snapshot is for gateway {own.get('gateway')!r}, not {gateway!r}")
    if not isinstance(own.get("upstreams"), dict):
        raise SnapshotError("the gateway part has no upstreams object")
    doc = {k: v for k, v in common.items() if k not in ("part", "kind")}
    doc["gateway"], doc["upstreams"] = own["gateway"], own["upstreams"]
    return Opened(kind, common["version"], doc)


def read_full(body: bytes, registry_key: PublicKey, gateway: str | None = None) -> dict[str, Any]:
    """The document of a full snapshot envelope (admin tools, tests); SnapshotError for a delta or a bad one."""
    opened = open_envelope(body, registry_key, gateway)
    if opened.kind != "full":
        raise SnapshotError("expected a full snapshot, got a delta")
    return opened.doc
