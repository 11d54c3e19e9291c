"""Subject declarations (issue 13, findings 7 and 8) without a live mesh: the registry derives where an endpoint's
personal IDs sit from its OpenAPI document (`$ref` parameters and request bodies resolved, body schema properties
and `x-lienthong-subjects` pointers with `*` for arrays, `x-lienthong-batch`), the extractor finds every identifier
at a declared location and answers anything else with a Problem, and quota, meter and audit count a batch's items
and subjects. The same over real processes: tests/test_audit_subjects_mesh.py."""

from __future__ import annotations

import copy
import hashlib
import hmac
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lienthong.problem import Problem
from lienthong.snapshot import Snapshot
from lienthong.subjects import (
    MAX_SUBJECTS,
    SUBJECT_KEY_ENV,
    SubjectSpec,
    extract,
    parse_declaration,
    response_subjects,
    subject_key_env,
)
from policies.audit import Audit, subject_key
from policies.base import CallContext
from policies.meter import record_of
from policies.meter_store import fold
from policies.quota import Quota
from registry.openapi_endpoints import derive
from tests.test_policy_fixtures import PERSON_ID, SERVICE, World

REPO = Path(__file__).resolve().parent.parent
KEY = b"subject-test-key-0123456789abcdef"
IDS = ["001067811828", "001080082057", "001086923084"]


def endpoints_of(spec: str) -> dict[tuple[str, str], dict[str, Any]]:
    doc = yaml.safe_load((REPO / "openapi" / spec).read_text())
    return {(e["method"], e["path"]): e for e in derive(doc)}


def spec_of(endpoint: dict[str, Any]) -> SubjectSpec:
    spec = parse_declaration(endpoint)
    assert spec is not None, endpoint
    return spec


# -- derivation at registration ------------------------------------------------------------------------------------


def test_the_population_specs_declare_every_subject_location() -> None:
    eps = endpoints_of("population.yaml")
    # the parameter is a $ref to components/parameters/PersonId: it used to give no subject at all
    assert eps[("GET", "/persons/{id}")]["subjects"] == [{"in": "path", "name": "id"}]
    assert eps[("GET", "/persons/{id}")]["subject_param"] == "id"
    assert eps[("GET", "/persons/{id}/residence")]["subjects"] == [{"in": "path", "name": "id"}]
    assert eps[("POST", "/persons/verify")]["subjects"] == [{"in": "body", "pointer": "/id"}]
    assert eps[("POST", "/persons/batch")]["subjects"] == [{"in": "body", "pointer": "/ids/*"}]
    assert eps[("POST", "/persons/batch")]["batch"] == {"items": "/ids"}
    assert eps[("POST", "/births")]["subjects"] == [{"in": "body", "pointer": "/father_id"},
                                                    {"in": "body", "pointer": "/mother_id"},
                                                    {"in": "response", "pointer": "/id"}]  # fmt: skip
    assert eps[("GET", "/households/{id}/members")]["subjects"][1:] == [{"in": "response", "pointer": "/head_id"},
                                                                        {"in": "response",
                                                                         "pointer": "/members/*/id"}]  # fmt: skip


def test_the_other_connectors_specs_declare_their_personal_ids() -> None:
    insurance = endpoints_of("insurance.yaml")
    assert {"in": "body", "pointer": "/personal_id"} in insurance[("POST", "/cards")]["subjects"]
    civil = endpoints_of("civil-status.yaml")
    disclosed = [{"in": "response", "pointer": p} for p in ("/personal_id", "/father_id", "/mother_id")]
    assert civil[("POST", "/births")]["subjects"] == [{"in": "body", "pointer": "/father_id"},
                                                      {"in": "body", "pointer": "/mother_id"}, *disclosed]  # fmt: skip
    assert {"in": "body", "pointer": "/personal_id"} in civil[("PATCH", "/births/{id}")]["subjects"]
    assert civil[("GET", "/births/{id}")]["subjects"] == [{"in": "path", "name": "id"}, *disclosed]
    assert {"in": "response", "pointer": "/person_id"} in insurance[("GET", "/insured/{si_number}")]["subjects"]
    business = endpoints_of("business-registry.yaml")
    assert {"in": "response", "pointer": "/owners/*/personal_id"} in business[("GET", "/enterprises/{code}")][
        "subjects"
    ]


def _doc(op: dict[str, Any], path: str = "/x/{id}", components: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"openapi": "3.0.3", "info": {"title": "t", "version": "1"}, "paths": {path: {"post": op}},
            "components": components or {}}  # fmt: skip


def test_refs_to_request_bodies_and_schemas_and_explicit_pointers_are_resolved() -> None:
    components = {
        "requestBodies": {"People": {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/P"}}}}},
        "schemas": {
            "P": {"type": "object", "properties": {
                "people": {"type": "array", "items": {"$ref": "#/components/schemas/Person"}},
                "next": {"$ref": "#/components/schemas/P"},  # recursive: must not loop
            }},
            "Person": {"allOf": [{"type": "object", "properties": {"pid": {"type": "string",
                                                                           "x-lienthong-subject": True}}}]},
        },
        "parameters": {"Id": {"name": "id", "in": "path", "required": True, "x-lienthong-subject": True}},
    }  # fmt: skip
    op = {"parameters": [{"$ref": "#/components/parameters/Id"}],
          "requestBody": {"$ref": "#/components/requestBodies/People"},
          "x-lienthong-subjects": [{"in": "query", "name": "who"}, {"in": "body", "pointer": "/extra/*/ids/*"}],
          "x-lienthong-batch": {"items": "/people"}, "responses": {}}  # fmt: skip
    (ep,) = derive(_doc(op, components=components))
    assert ep["subjects"] == [
        {"in": "path", "name": "id"},
        {"in": "body", "pointer": "/people/*/pid"},
        {"in": "query", "name": "who"},
        {"in": "body", "pointer": "/extra/*/ids/*"},
    ]
    assert ep["batch"] == {"items": "/people"}
    spec = spec_of(ep)
    body = orjson.dumps({"people": [{"pid": "a"}, {"pid": "b"}, {"x": 1}], "extra": [{"ids": ["c", "a"]}]})
    found, items = extract(spec, {"id": "p"}, b"who=q&who=r", {}, body)
    assert found == ["p", "q", "r", "a", "b", "c"] and items == 3


@pytest.mark.parametrize(
    ("op", "field_part"),
    [
        ({"parameters": [{"$ref": "#/components/parameters/Nope"}]}, "parameters.0"),
        ({"parameters": [{"$ref": "other.yaml#/Id"}]}, "parameters.0"),
        ({"x-lienthong-subjects": "id"}, "x-lienthong-subjects"),
        ({"x-lienthong-subjects": [{"in": "path", "name": "nope"}]}, "post"),
        ({"x-lienthong-subjects": [{"in": "cookie", "name": "id"}]}, "post"),
        ({"x-lienthong-subjects": [{"in": "body", "pointer": "ids"}]}, "post"),
        ({"x-lienthong-subjects": [{"in": "body", "pointer": "/a//b"}]}, "post"),
        ({"x-lienthong-batch": {"items": "/ids/*"}}, "post"),
        ({"x-lienthong-batch": "/ids"}, "post"),
        ({"parameters": [{"name": "id", "in": "cookie", "x-lienthong-subject": True}]}, "post"),
    ],
)
def test_a_declaration_the_gateway_cannot_read_is_refused_at_registration(op: dict[str, Any], field_part: str) -> None:
    with pytest.raises(Problem) as caught:
        derive(_doc({**op, "responses": {}}))
    assert caught.value.status == 400 and caught.value.field is not None
    assert caught.value.field.startswith("openapi.paths./x/{id}.post") and field_part in caught.value.field


# -- extraction per call --------------------------------------------------------------------------------------------

BATCH = spec_of({"path": "/persons/batch", "subjects": [{"in": "body", "pointer": "/ids/*"},
                                                        {"in": "body", "pointer": "/person/id"}],
                 "batch": {"items": "/ids"}})  # fmt: skip
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.sampled_from(["ids", "person", "id", "x"])
                                                                       | st.text(max_size=5), children, max_size=5),
    max_leaves=30,
)  # fmt: skip


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(json_values.map(orjson.dumps), st.binary(max_size=200)))
def test_any_body_is_read_or_refused_with_a_problem(body: bytes) -> None:
    try:
        found, items = extract(BATCH, {}, b"", {}, body)
    except Problem as problem:
        assert problem.status in (400, 413) and problem.field
        return
    assert items >= 1 and all(isinstance(s, str) for s in found)


ident = st.text(st.characters(blacklist_categories=["Cs"]), min_size=1, max_size=16) | st.integers(0, 10**12).map(str)


@settings(max_examples=300)
@given(st.lists(ident, max_size=40), st.one_of(st.none(), ident), st.dictionaries(st.text(max_size=5), json_values,
                                                                                  max_size=3))  # fmt: skip
def test_every_identifier_at_a_declared_location_is_found(ids: list[str], person: str | None,
                                                          junk: dict[str, Any]) -> None:  # fmt: skip
    doc: dict[str, Any] = {k: v for k, v in junk.items() if k not in ("ids", "person")}
    doc["ids"] = ids
    if person is not None:
        doc["person"] = {"id": person, "name": "x"}
    found, items = extract(BATCH, {}, b"", {}, orjson.dumps(doc))
    expected = list(dict.fromkeys([*ids, *([person] if person is not None else [])]))
    assert found == expected
    assert items == max(1, len(ids))


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"{not json", "body"),
        (b"", "body"),
        (b'{"ids": "001067811828"}', "ids"),
        (b'{"ids": [1.5]}', "ids.0"),
        (b'{"ids": ["001067811828", {"id": "x"}]}', "ids.1"),
        (b'{"ids": [], "person": "001067811828"}', "person"),
        (b'["001067811828"]', "body"),
    ],
)
def test_an_unreadable_declared_location_is_a_400_naming_the_field(body: bytes, field: str) -> None:
    with pytest.raises(Problem) as caught:
        extract(BATCH, {}, b"", {}, body)
    assert caught.value.status == 400 and caught.value.code == "invalid-body" and caught.value.field == field


def test_a_body_with_more_subjects_than_the_bound_is_refused() -> None:
    body = orjson.dumps({"ids": [str(i) for i in range(MAX_SUBJECTS + 1)]})
    with pytest.raises(Problem) as caught:
        extract(BATCH, {}, b"", {}, body)
    assert caught.value.status == 413 and caught.value.field == "ids.*"


# -- quota, meter and audit of one batch call, in process ------------------------------------------------------------


def batch_world(quota: dict[str, int]) -> Snapshot:
    world = World(quota=quota)
    doc = copy.deepcopy(world.doc())
    doc["services"][0]["endpoints"] += [
        {"method": "POST", "path": "/persons/batch", "enabled": True,
         "subjects": [{"in": "body", "pointer": "/ids/*"}], "batch": {"items": "/ids"}},
        {"method": "POST", "path": "/persons/verify", "enabled": True, "subjects": [{"in": "body", "pointer": "/id"}]},
    ]  # fmt: skip
    return Snapshot(doc)


def call(snap: Snapshot, method: str, path: str, body: Any, role: str = "home") -> CallContext:
    service = snap.services[SERVICE]
    matched = service.match(method, path)
    assert matched is not None
    ctx = CallContext(gateway="national", transaction_id=uuid.uuid4().hex, method=method, path=path, query=b"",
                      headers={}, body=orjson.dumps(body) if body is not None else b"", snapshot=snap,
                      role=role, service_id=SERVICE)  # type: ignore[arg-type]  # fmt: skip
    ctx.service, (ctx.endpoint, ctx.path_params) = service, matched
    ctx.grant = snap.grants[("VN/PROV/NGHEAN/civil-status", SERVICE)][0]
    return ctx


@pytest.fixture
def minute_left() -> None:
    left = 60 - time.time() % 60
    if left < 5:
        time.sleep(left + 0.1)


def test_quota_counts_a_batchs_items_and_refuses_one_larger_than_what_is_left_whole(
    redis_url: str, minute_left: None
) -> None:
    snap = batch_world({"per_minute": 5, "per_day": 1000})
    quota = Quota(redis_url)
    with pytest.raises(Problem) as caught:
        quota.access(call(snap, "POST", "/persons/batch", {"ids": [str(i) for i in range(6)]}))
    assert caught.value.status == 429 and caught.value.extra["quota"] == "per_minute"
    assert "Retry-After" in caught.value.headers
    quota.access(call(snap, "POST", "/persons/batch", {"ids": IDS}))  # 3 of 5: the refused 6 took nothing
    with pytest.raises(Problem):
        quota.access(call(snap, "POST", "/persons/batch", {"ids": IDS}))  # 3 more than the 2 left
    quota.access(call(snap, "GET", f"/persons/{PERSON_ID}", None))
    quota.access(call(snap, "POST", "/persons/verify", {"id": PERSON_ID}))
    with pytest.raises(Problem):
        quota.access(call(snap, "GET", f"/persons/{PERSON_ID}", None))


def test_a_batch_of_a_thousand_under_one_call_a_minute_is_429(redis_url: str, minute_left: None) -> None:
    snap = batch_world({"per_minute": 1, "per_day": 1000})
    with pytest.raises(Problem) as caught:
        Quota(redis_url).access(call(snap, "POST", "/persons/batch", {"ids": [f"{i:012d}" for i in range(1000)]}))
    assert caught.value.status == 429


def test_the_meter_counts_a_forwarded_batch_by_items_and_a_refused_one_once() -> None:
    snap = batch_world({"per_minute": 5, "per_day": 1000})
    ok = call(snap, "POST", "/persons/batch", {"ids": [*IDS, IDS[0]]})
    ok.status = 200
    refused = call(snap, "POST", "/persons/batch", {"ids": IDS})
    refused.status, refused.error_code = 429, "quota-exceeded"
    single = call(snap, "GET", f"/persons/{PERSON_ID}", None)
    single.status = 200
    deltas = fold([record_of(c, time.time()) for c in (ok, refused, single)], "nghean")
    counts = {field: n for (key, field), n in deltas.items() if key.startswith("meter:h:")}
    histogram = sum(n for (key, _), n in deltas.items() if key.startswith("meter:l:"))
    assert sum(n for f, n in counts.items() if "|POST /persons/batch|" in f and f.endswith("|found")) == 4
    assert sum(n for f, n in counts.items() if "|POST /persons/batch|" in f and f.endswith("|client-error")) == 1
    assert sum(counts.values()) == 6 and histogram == 3  # counts are items, latency histograms are calls


def test_the_audit_holds_every_subject_of_a_batch_as_an_hmac(tmp_path: Path) -> None:
    snap = batch_world({"per_minute": 5, "per_day": 1000})
    audit = Audit("national", tmp_path, KEY)
    ctx = call(snap, "POST", "/persons/batch", {"ids": [*IDS, IDS[1]]})
    audit.access(ctx)
    ctx.status = 200
    record = audit.record(ctx)
    expected = [hmac.new(KEY, i.encode(), hashlib.sha256).hexdigest() for i in IDS]
    assert record["subject_hmacs"] == expected and record["subject_hmac"] == expected[0] and record["items"] == 4
    assert list(record) == sorted(record)
    assert not any(i in orjson.dumps(record).decode() for i in IDS)
    bad = call(snap, "POST", "/persons/verify", {"id": ["x"]})
    with pytest.raises(Problem) as caught:
        audit.access(bad)
    assert caught.value.field == "id"
    assert audit.record(bad)["subject_hmacs"] == []  # the log phase never raises


# -- the mesh-wide subject key ---------------------------------------------------------------------------------------


def test_a_one_machine_mesh_gives_every_gateway_one_lasting_subject_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(SUBJECT_KEY_ENV, raising=False)
    first = subject_key_env(tmp_path / "subject.key")
    assert first == subject_key_env(tmp_path / "subject.key")  # kept: pseudonyms survive a restart
    assert (tmp_path / "subject.key").stat().st_mode & 0o777 == 0o600
    monkeypatch.setenv(SUBJECT_KEY_ENV, first[SUBJECT_KEY_ENV])
    key, mesh_wide = subject_key(b"own")
    assert mesh_wide and key == bytes.fromhex(first[SUBJECT_KEY_ENV])
    assert subject_key_env(tmp_path / "other.key") == {}  # the operator's own key wins


@pytest.mark.parametrize("value", ["not hex", "00" * 15])
def test_a_bad_subject_key_stops_the_gateway_at_start(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(SUBJECT_KEY_ENV, value)
    with pytest.raises(ValueError, match=SUBJECT_KEY_ENV):
        subject_key(b"own")


def test_without_a_subject_key_a_gateway_keeps_its_own_and_says_so_in_each_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(SUBJECT_KEY_ENV, raising=False)
    assert subject_key(b"own") == (b"own", False)
    snap = batch_world({"per_minute": 5, "per_day": 1000})
    mine, theirs = Audit("national", tmp_path / "a", b"a" * 32), Audit("nghean", tmp_path / "b", b"b" * 32)
    a, b = (x.record(call(snap, "GET", f"/persons/{PERSON_ID}", None)) for x in (mine, theirs))
    assert a["subject_hmac"] != b["subject_hmac"] and a["subject_key_id"] != b["subject_key_id"]


# -- subjects an answer discloses ------------------------------------------------------------------------------------

MEMBERS = spec_of({"path": "/households/{id}/members", "subjects": [
    {"in": "path", "name": "id"}, {"in": "response", "pointer": "/head_id"},
    {"in": "response", "pointer": "/members/*/id"}]})  # fmt: skip


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(json_values.map(orjson.dumps), st.binary(max_size=200)))
def test_reading_an_answer_never_raises(body: bytes) -> None:
    assert all(isinstance(s, str) for s in response_subjects(MEMBERS, body))


def test_the_people_an_answer_discloses_are_audited_when_it_was_a_success(tmp_path: Path) -> None:
    world = World()
    doc = copy.deepcopy(world.doc())
    doc["services"][0]["endpoints"].append(
        {"method": "GET", "path": "/households/{id}/members", "enabled": True,
         "subjects": [{"in": "path", "name": "id"}, {"in": "response", "pointer": "/head_id"},
                      {"in": "response", "pointer": "/members/*/id"}]})  # fmt: skip
    snap = Snapshot(doc)
    audit = Audit("national", tmp_path, KEY)
    ctx = call(snap, "GET", "/households/H1/members", None)
    ctx.status = 200
    ctx.response_body = orjson.dumps({"id": "H1", "head_id": IDS[0], "members": [{"id": IDS[0]}, {"id": IDS[1]},
                                                                                  {"full_name": "no id"}]})  # fmt: skip
    expected = [hmac.new(KEY, i.encode(), hashlib.sha256).hexdigest() for i in ("H1", IDS[0], IDS[1])]
    assert audit.record(ctx)["subject_hmacs"] == expected
    ctx.status = 404  # an answer that is no success discloses nobody, whatever its body says
    assert audit.record(ctx)["subject_hmacs"] == expected[:1]
