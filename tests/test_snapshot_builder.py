"""The snapshot reader never raises on what a signed snapshot holds (issue 13): an entry it cannot build is
quarantined with its reason, the rest is indexed, and an unchanged service keeps the routes compiled before.

A hypothesis property feeds arbitrary JSON where service, endpoint, grant, client, gateway, member and subsystem
entries (or whole sections) belong; the live-mesh side of the same class is in test_snapshot_quarantine.py.
"""

from __future__ import annotations

import copy
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lienthong import keys
from lienthong.snapshot import MAX_ENDPOINTS, EntryError, Snapshot, check_template, template_names

SERVICE = "VN/GOV/BCA/population/persons"
CLIENT = "VN/GOV/BHXH/insurance"
KEY = keys.public_jwk(keys.generate(), "k-client")
GATEWAY_KEY = keys.public_jwk(keys.generate(), "k-gateway")


def base_doc() -> dict[str, Any]:
    return {
        "version": 3, "gateway": "national", "instance": "VN",
        "members": [{"id": "VN/GOV/BHXH", "name": "BHXH", "home_gateway": "national", "version": 1}],
        "subsystems": [{"id": CLIENT, "member": "VN/GOV/BHXH", "name": "insurance", "version": 1}],
        "gateways": [{"code": "national", "base_url": "http://127.0.0.1:1", "keys": [GATEWAY_KEY], "version": 1}],
        "upstreams": {SERVICE: "http://127.0.0.1:2"},
        "clients": [{"subsystem": CLIENT, "keys": [{**KEY, "revoked": False}]}],
        "services": [service(SERVICE, [{"method": "GET", "path": "/persons/{id}", "enabled": True},
                                       {"method": "GET", "path": "/persons/{id}/residence", "enabled": True},
                                       {"method": "POST", "path": "/persons/search", "enabled": True}])],
        "grants": [{"id": "g-1", "consumer": CLIENT, "service": SERVICE, "endpoints": "*", "purposes": ["p"],
                    "fields": None, "quota": {"per_minute": 10, "per_day": None}, "revoked": False}],
    }  # fmt: skip


def service(service_id: str, endpoints: Any) -> dict[str, Any]:
    provider, code = service_id.rsplit("/", 1)
    return {"id": service_id, "provider": provider, "code": code, "gateway": "national", "approved": True,
            "timeout_ms": 5000, "endpoints": endpoints, "version": 1}  # fmt: skip


def assert_good_parts_installed(snap: Snapshot) -> None:
    """Whatever else the document holds, its good entries are all there and work."""
    matched = snap.services[SERVICE].match("GET", "/persons/001/residence")
    assert matched is not None and matched[0].path == "/persons/{id}/residence" and matched[1] == {"id": "001"}
    assert snap.find_grant(CLIENT, SERVICE, "GET", "/persons/{id}", "p") is not None
    assert snap.client_keys["k-client"][0] == CLIENT and snap.gateway_keys["k-gateway"][0] == "national"
    assert snap.home_gateway(CLIENT) == "national" and SERVICE in snap.upstreams


# -- each member of the class, by name ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("endpoints", "reason"),
    [
        ([{"method": "GET", "path": "/x/{id}/{id}"}], "names the parameter 'id' twice"),
        ([{"method": "GET", "path": 42}], "path 42 is not a string"),
        ({"GET": "/x/{id}"}, "endpoints {'GET': '/x/{id}'} is not a list"),
        ([{"method": ["GET"], "path": "/x"}], "method ['GET'] is not an HTTP method"),
        ([{"method": "GET", "path": "/x/{id}(?P<rest>.*)"}], "invalid segment"),
        ([{"method": "GET", "path": "/x/{i.d}"}], "invalid segment"),
        ([{"method": "GET", "path": "/x/../y"}], "invalid segment '..'"),
        ([{"method": "GET", "path": "x/{id}"}], "does not start with '/'"),
        ([{"method": "GET", "path": "/" + "a" * 2000}], "longer than"),
        ([{"method": "GET", "path": f"/p{i}/{{id}}"} for i in range(MAX_ENDPOINTS + 1)], "more than a gateway"),
        ([{"method": "GET", "path": "/x", "enabled": "yes"}], "enabled 'yes' is not true or false"),
        (["GET /x"], "is not an object"),
    ],
)
def test_a_service_that_cannot_be_built_is_quarantined_with_its_reason(endpoints: Any, reason: str) -> None:
    doc = base_doc()
    bad = "VN/GOV/BCA/population/bad"
    doc["services"].append(service(bad, endpoints))
    snap = Snapshot(doc)
    assert bad not in snap.services and reason in snap.quarantined_services[bad]
    assert [(q.kind, q.id) for q in snap.quarantined] == [("service", bad)]
    assert_good_parts_installed(snap)


def test_bad_grants_and_keys_are_left_out_alone_and_fail_closed() -> None:
    doc = base_doc()
    doc["grants"] += [
        {"id": "g-2", "consumer": CLIENT, "service": SERVICE, "endpoints": "GET /x", "purposes": ["q"]},
        {"id": "g-3", "consumer": CLIENT, "service": SERVICE, "purposes": ["r"], "revoked": "no"},
        {"id": "g-4", "consumer": CLIENT, "service": SERVICE, "purposes": "s"},
    ]
    doc["clients"].append({"subsystem": "VN/GOV/X/y", "keys": [{"kty": "OKP", "crv": "Ed25519", "kid": "k-x"}]})
    doc["gateways"].append({"code": "hanoi", "keys": "none"})
    snap = Snapshot(doc)
    assert {(q.kind, q.id) for q in snap.quarantined} == {
        ("grant", "g-2"),
        ("grant", "g-3"),
        ("grant", "g-4"),
        ("client", "VN/GOV/X/y"),
        ("gateway", "hanoi"),
    }
    for purpose in ("q", "r", "s"):
        assert snap.find_grant(CLIENT, SERVICE, "GET", "/persons/{id}", purpose) is None
    assert "k-x" not in snap.client_keys and "hanoi" not in snap.gateways
    assert_good_parts_installed(snap)


def test_a_key_id_two_owners_claim_verifies_for_neither() -> None:
    doc = base_doc()
    other = keys.public_jwk(keys.generate(), "k-client")  # another key under the same kid, revoked or not
    doc["gateways"].append({"code": "hanoi", "keys": [{**other, "revoked": True}]})
    snap = Snapshot(doc)
    assert "k-client" not in snap.client_keys and "k-client" not in snap.gateway_keys
    assert [(q.kind, q.id) for q in snap.quarantined] == [("key", "k-client")]


def test_a_section_of_the_wrong_type_is_empty_and_says_so() -> None:
    doc = base_doc()
    doc["grants"] = {"g-1": doc["grants"][0]}
    doc["upstreams"] = [SERVICE]
    snap = Snapshot(doc)
    assert snap.grants == {} and snap.upstreams == {}
    assert {(q.kind, q.id) for q in snap.quarantined} == {("section", "grants"), ("section", "upstreams")}


def test_an_unchanged_service_keeps_its_compiled_routes_and_a_changed_one_is_rebuilt() -> None:
    doc = base_doc()
    doc["services"].append(service("VN/GOV/BCA/population/bad", [{"method": "GET", "path": "/x/{id}/{id}"}]))
    first = Snapshot(doc)
    again = orjson.loads(orjson.dumps({**doc, "version": 4}))  # parsed afresh, as every fetched version is
    second = Snapshot(again, previous=first)
    assert second.services[SERVICE] is first.services[SERVICE]
    assert second.quarantined == first.quarantined
    changed = orjson.loads(orjson.dumps({**again, "version": 5}))
    changed["services"][0]["endpoints"][0]["enabled"] = False
    third = Snapshot(changed, previous=second)
    assert third.services[SERVICE] is not second.services[SERVICE]
    assert not third.services[SERVICE].endpoints[0].enabled


def test_templates_follow_the_registry_grammar() -> None:
    for good in ("/", "/persons/{id}", "/persons/{id}/residence", "/a.b/c~d/{x_1}/e:f@g"):
        assert check_template(good) == good
    # the registry's own check (registry/path_templates.py) is this function: names in order, whole segments only
    assert template_names("/a/{x}/b/{Y_2}") == ["x", "Y_2"] and template_names("/") == []
    for bad, reason in (("/x\n", "invalid segment"), ("/x/{id}\n", "invalid segment"), ("/x/{a-b}", "identifier")):
        with pytest.raises(EntryError, match=reason):
            template_names(bad)


# -- arbitrary JSON anywhere ---------------------------------------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
# the fields a reader looks at, so that garbage lands where it matters more often than chance would put it
FIELDS = ["id", "provider", "code", "gateway", "approved", "timeout_ms", "endpoints", "method", "path", "enabled",
          "operation_id", "summary", "subject_param", "consumer", "service", "purposes", "fields", "quota",
          "revoked", "subsystem", "keys", "kid", "kty", "crv", "x", "home_gateway", "base_url"]  # fmt: skip
SECTIONS = ["services", "grants", "clients", "gateways", "members", "subsystems"]


def _entry(doc: dict[str, Any], section: str) -> dict[str, Any]:
    """A copy of the section's good entry, under other ids so that it never replaces (or contests) the good one."""
    entry = copy.deepcopy(doc[section][0])
    for key in ("id", "subsystem", "code"):
        if key in entry:
            entry[key] = f"{entry[key]}-other"
    for jwk in entry.get("keys", []):
        jwk["kid"] += "-other"
    return entry


@st.composite
def poisoned_docs(draw: st.DrawFn) -> dict[str, Any]:
    doc = base_doc()
    for _ in range(draw(st.integers(1, 3))):
        section = draw(st.sampled_from(SECTIONS))
        how = draw(st.sampled_from(["entry", "field", "endpoint-field", "key-field", "section", "policy"]))
        if how == "section":
            doc[draw(st.sampled_from([*SECTIONS, "upstreams", "upstream_policy"]))] = draw(JSON)
            continue
        if how == "policy":  # the mesh's upstream policy, with garbage among its entries
            doc["upstream_policy"] = {
                "allow": draw(st.lists(JSON, max_size=3)),
                "mesh": draw(st.lists(JSON, max_size=3)),
            }
            continue
        if not isinstance(doc.get(section), list) or not doc[section] or not isinstance(doc[section][0], dict):
            continue
        if how == "entry":
            doc[section].append(draw(JSON))
            continue
        entry = _entry(doc, section)
        target = entry
        if how == "endpoint-field" and section == "services" and isinstance(entry.get("endpoints"), list):
            target = entry["endpoints"][0]
        if how == "key-field" and isinstance(entry.get("keys"), list) and entry["keys"]:
            target = entry["keys"][0]
        target[draw(st.sampled_from(FIELDS))] = draw(JSON)
        doc[section].append(entry)
    return doc


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(poisoned_docs())
def test_no_json_inside_a_snapshot_makes_the_reader_raise(doc: dict[str, Any]) -> None:
    intact = {s for s in SECTIONS if _kept(doc, s)}
    snap = Snapshot(doc)
    again = Snapshot(copy.deepcopy({**doc, "version": 4}), previous=snap)  # the reuse path too
    for built in (snap, again):
        for sid in built.quarantined_services:
            assert sid not in built.services  # a quarantined service never routes
        if {"services", "grants", "clients", "gateways", "members"} <= intact and _upstreams_kept(doc):
            assert_good_parts_installed(built)


def _kept(doc: dict[str, Any], section: str) -> bool:
    """The section is still a list that starts with its good entry (garbage was only added after it)."""
    value = doc.get(section)
    return isinstance(value, list) and bool(value) and value[0] == base_doc()[section][0]


def _upstreams_kept(doc: dict[str, Any]) -> bool:
    return doc.get("upstreams") == base_doc()["upstreams"]
