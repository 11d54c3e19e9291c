"""A delta applied to a snapshot gives exactly what a full snapshot of the new version gives (protocol §7.2).

Differential property: two random states of the same small world (entries present, absent, changed, malformed, kids
claimed twice), the full snapshot of the first, the delta between them, and `apply`: every index a gateway reads
(routes, grants, keys, upstreams, quarantines, PKI) must equal the full snapshot of the second. Also the refusals
that make a gateway ask for a full snapshot instead.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lienthong import keys
from lienthong.snapshot import SECTIONS, Snapshot, SnapshotError

KIDS = [keys.public_jwk(keys.generate(), f"k{i}") for i in range(4)]
MEMBERS = ["VN/GOV/BCA", "VN/PROV/HANOI"]
GATEWAYS = ["national", "hanoi"]
CLIENTS = ["VN/GOV/BCA/a", "VN/PROV/HANOI/b"]
SERVICES = ["VN/GOV/BCA/a/persons", "VN/PROV/HANOI/b/births"]
GRANTS = ["g-0", "g-1", "g-2"]
ENDPOINTS = [
    [{"method": "GET", "path": "/persons/{id}"}],
    [{"method": "GET", "path": "/persons/{id}"}, {"method": "POST", "path": "/persons/search"}],
    [{"method": "GET", "path": "/x/{id}/{id}"}],  # quarantined: a parameter twice
]


def member(i: str, variant: int) -> Any:
    return {"id": i, "name": i, "home_gateway": GATEWAYS[variant % 2] if variant < 2 else 7}  # 7: quarantined


def gateway(code: str, variant: int) -> Any:
    return {"code": code, "base_url": f"http://127.0.0.1:{8700 + variant}", "keys": [KIDS[variant % 4]]}


def client(subsystem: str, variant: int) -> Any:
    jwk = {**KIDS[variant % 4], "revoked": variant >= 4}
    return {"subsystem": subsystem, "keys": [jwk] if variant != 5 else [{"kid": "bad"}]}  # 5: a malformed key


def service(sid: str, variant: int) -> Any:
    provider, code = sid.rsplit("/", 1)
    return {"id": sid, "provider": provider, "code": code, "gateway": GATEWAYS[variant % 2], "approved": True,
            "timeout_ms": 1000 + variant, "endpoints": ENDPOINTS[variant % 3]}  # fmt: skip


def grant(gid: str, variant: int) -> Any:
    return {"id": gid, "consumer": CLIENTS[variant % 2], "service": SERVICES[variant % 2], "endpoints": "*",
            "purposes": ["p"] if variant != 3 else "p",  # 3: quarantined
            "fields": None, "quota": {}, "revoked": variant == 4}  # fmt: skip


BUILDERS = {"members": (MEMBERS, member), "subsystems": (CLIENTS, lambda i, v: {"id": i, "member": i[:10]}),
            "gateways": (GATEWAYS, gateway), "clients": (CLIENTS, client), "services": (SERVICES, service),
            "grants": (GRANTS, grant)}  # fmt: skip
VARIANTS = st.one_of(st.none(), st.integers(0, 5))  # None: the entry is absent


@st.composite
def world(draw: st.DrawFn) -> dict[str, Any]:
    state: dict[str, Any] = {}
    for section, (ids, build) in BUILDERS.items():
        state[section] = {i: build(i, v) for i in ids if (v := draw(VARIANTS)) is not None}
    state["upstreams"] = {s: f"http://10.0.0.{draw(st.integers(1, 3))}" for s in SERVICES if draw(st.booleans())}
    state["pki"] = {"ca": [], "revoked": draw(st.lists(st.sampled_from(["1a", "2b", "3c"]), unique=True))}
    return state


def full_doc(state: dict[str, Any], version: int) -> dict[str, Any]:
    doc: dict[str, Any] = {s: list(state[s].values()) for s in SECTIONS}
    doc.update(version=version, gateway="national", instance="VN", config="c1", upstreams=state["upstreams"],
               pki=state["pki"], upstream_policy={"allow": ["127.0.0.1:9"], "mesh": []})  # fmt: skip
    return doc


def delta_doc(before: dict[str, Any], after: dict[str, Any], since: int, version: int) -> dict[str, Any]:
    """What the registry sends: every entry whose value changed, None for one that is gone."""

    def changed(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
        return {i: new.get(i) for i in old.keys() | new.keys() if old.get(i) != new.get(i)}

    doc: dict[str, Any] = {"from": since, "version": version, "gateway": "national", "instance": "VN",
                           "config": "c1", "changes": {s: changed(before[s], after[s]) for s in SECTIONS},
                           "upstreams": changed(before["upstreams"], after["upstreams"])}  # fmt: skip
    if before["pki"] != after["pki"]:
        doc["pki"] = after["pki"]
    return doc


def view(snap: Snapshot) -> dict[str, Any]:
    """Everything a gateway reads from a snapshot, in a form that does not depend on the order it was built in."""
    return {
        "version": snap.version,
        "services": {sid: (s.doc, sorted((e.method, e.path) for e in s.endpoints)) for sid, s in snap.services.items()},
        "grants": {k: sorted(g.id for g in v) for k, v in snap.grants.items()},
        "members": snap.members, "subsystems": snap.subsystems, "gateways": snap.gateways,
        "gateway_keys": {k: owner for k, (owner, _key) in snap.gateway_keys.items()},
        "client_keys": {k: owner for k, (owner, _key) in snap.client_keys.items()},
        "upstreams": snap.upstreams,
        # a contested kid's reason names its two claimants in the order met: compare which kid, not the wording
        "quarantined": sorted((q.kind, q.id, q.reason if q.kind != "key" else "") for q in snap.quarantined),
        "quarantined_services": snap.quarantined_services,
        "pki": (snap.ca_pems, snap.revoked_serials),
        "policy": (snap.upstream_policy.allow, sorted(snap.upstream_policy.mesh, key=repr)),
    }  # fmt: skip


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(first=world(), second=world(), third=world())
def test_applying_deltas_equals_building_the_full_snapshot(
    first: dict[str, Any], second: dict[str, Any], third: dict[str, Any]
) -> None:
    held = Snapshot(full_doc(first, 1))
    before = view(held)
    at_two = held.apply(delta_doc(first, second, 1, 2))
    assert view(at_two) == view(Snapshot(full_doc(second, 2)))
    assert view(at_two.apply(delta_doc(second, third, 2, 5))) == view(Snapshot(full_doc(third, 5)))
    assert view(held) == before  # the snapshot in use is never changed under the calls reading it


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"from": 2}, "goes from version 2"),
        ({"version": 1}, "not past 1"),
        ({"gateway": "hanoi"}, "for gateway 'hanoi'"),
        ({"config": "c2"}, "configuration changed"),
        ({"changes": []}, "must be JSON objects"),
        ({"changes": {"grants": ["g-0"]}}, "changes.grants is not a JSON object"),
    ],
)
def test_a_delta_that_does_not_follow_is_refused_and_changes_nothing(change: dict[str, Any], reason: str) -> None:
    state = {s: {} for s in BUILDERS} | {"upstreams": {}, "pki": {"ca": [], "revoked": []}}
    state["grants"] = {"g-0": grant("g-0", 0)}
    held = Snapshot(full_doc(state, 1))
    delta = delta_doc(state, {**state, "grants": {}}, 1, 2) | change
    with pytest.raises(SnapshotError, match=reason):
        held.apply(delta)
    assert held.version == 1 and held._grant_at.keys() == {"g-0"}


def test_a_service_the_delta_leaves_alone_keeps_its_compiled_routes() -> None:
    state = {s: {} for s in BUILDERS} | {"upstreams": {}, "pki": {"ca": [], "revoked": []}}
    state["services"] = {SERVICES[0]: service(SERVICES[0], 1), SERVICES[1]: service(SERVICES[1], 0)}
    held = Snapshot(full_doc(state, 1))
    changed = {**state, "services": {**state["services"], SERVICES[1]: service(SERVICES[1], 2)}}
    after = held.apply(delta_doc(state, changed, 1, 2))
    assert after.services[SERVICES[0]] is held.services[SERVICES[0]]  # not rebuilt: the same object
    assert SERVICES[1] in after.quarantined_services and SERVICES[1] in held.services
