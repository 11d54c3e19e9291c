"""minimize: a property test with random grants and random JSON documents proves that no field outside the grant
ever reaches the consumer, and that everything the grant allows does."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lienthong.problem import Problem
from policies.minimize import Minimize
from tests.test_policy_fixtures import World, context

NAMES = st.sampled_from(["id", "full_name", "household", "members", "address", "phone", "a", "b"])
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-(2**53), 2**53), st.text(max_size=5))
DOCS = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(NAMES, inner, max_size=4)),
    max_leaves=25,
)
PATHS = st.lists(st.lists(NAMES, min_size=1, max_size=3).map(".".join), max_size=5)


def leaf_paths(value: Any, prefix: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    """Every field path that carries a value in value (list positions are transparent, as in the grant's paths)."""
    if isinstance(value, dict):
        return set().union(*(leaf_paths(v, (*prefix, k)) for k, v in value.items()))
    if isinstance(value, list):
        return set().union(*(leaf_paths(v, prefix) for v in value))
    return {prefix}


def container_paths(value: Any, prefix: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    """Every path that holds an object or a list (its presence alone says something)."""
    if isinstance(value, dict):
        return {prefix}.union(*(container_paths(v, (*prefix, k)) for k, v in value.items()))
    if isinstance(value, list):
        return {prefix}.union(*(container_paths(v, prefix) for v in value))
    return set()


def allowed(path: tuple[str, ...], grant: list[str]) -> bool:
    return any(path[: len(g.split("."))] == tuple(g.split(".")) for g in grant)


def on_the_way(path: tuple[str, ...], grant: list[str]) -> bool:
    return allowed(path, grant) or any(tuple(g.split("."))[: len(path)] == path for g in grant)


def run(fields: list[str] | None, body: bytes, role: str = "provider", content_type: str = "application/json") -> Any:
    world = World(grant_fields=fields)
    snap = world.snapshot()
    ctx = context(snap, role=role)  # type: ignore[arg-type]
    ctx.grant = snap.grants[("VN/PROV/NGHEAN/civil-status", "VN/GOV/BCA/population/persons")][0]
    ctx.status, ctx.response_body = 200, body
    ctx.response_headers = [("content-type", content_type), ("content-length", str(len(body)))]
    Minimize().response(ctx)
    return ctx


@settings(max_examples=300, deadline=None)
@given(fields=PATHS, doc=DOCS)
def test_no_field_outside_the_grant_ever_survives(fields: list[str], doc: Any) -> None:
    ctx = run(fields, orjson.dumps(doc))
    out = orjson.loads(ctx.response_body)
    if not isinstance(out, dict | list):
        assert out is None  # a bare scalar has no field name, so no grant covers it
        return
    for path in leaf_paths(out):
        assert allowed(path, fields), f"{path} leaked through grant {fields}"
    for path in container_paths(out) - {()}:
        assert on_the_way(path, fields), f"{path} leaked through grant {fields}"
    if isinstance(doc, dict):
        for g in fields:  # what the grant allows still arrives
            if "." not in g and g in doc:
                assert out[g] == doc[g]
    assert "content-length" not in dict(ctx.response_headers)


def test_nested_objects_and_arrays_of_objects() -> None:
    doc = {
        "id": "040203004567",
        "full_name": "Nguyen Van A",
        "phone": "0912345678",
        "household": {"id": "HH1", "head": "Nguyen Van B", "members": [{"id": "x"}]},
        "relatives": [{"id": "1", "name": "C"}],
    }
    out = orjson.loads(run(["id", "full_name", "household.id"], orjson.dumps(doc)).response_body)
    assert out == {"id": "040203004567", "full_name": "Nguyen Van A", "household": {"id": "HH1"}}
    listing_doc = {"items": [{"id": 1, "x": 2}, {"id": 3}], "n": 2}
    listing = orjson.loads(run(["items.id"], orjson.dumps(listing_doc)).response_body)
    assert listing == {"items": [{"id": 1}, {"id": 3}]}


def test_all_fields_grant_does_not_touch_the_body() -> None:
    body = b'{"id": 1,   "secret": 2}'
    assert run(None, body).response_body == body


def test_home_role_does_not_minimize_again() -> None:
    body = b'{"id": 1, "secret": 2}'
    assert run(["id"], body, role="home").response_body == body


def test_non_json_body_under_a_field_limit_fails_closed() -> None:
    """The refusal is raised for the router to answer, so none of the provider's body or headers can pass."""
    with pytest.raises(Problem) as refused:
        run(["id"], b"id=1;secret=2", content_type="text/plain")
    assert refused.value.status == 502 and refused.value.code == "upstream-failed"


def test_provider_problem_keeps_only_rfc9457_members() -> None:
    body = orjson.dumps({"type": "t", "title": "Not Found", "status": 404, "code": "not-found", "secret": "x"})
    out = orjson.loads(run(["id"], body, content_type="application/problem+json").response_body)
    assert out == {"type": "t", "title": "Not Found", "status": 404, "code": "not-found"}
