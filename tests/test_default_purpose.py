"""Issue 15, purpose: X-Road clients send no X-Purpose. On a live mesh (real registry, TLS), a call from a province
to the national database through two gateways, with the full policy chain:

- under a grant with a default purpose, a call without X-Purpose is served, and the consumer gateway's audit record
  says the purpose was applied by default; an explicit X-Purpose still wins (and an explicit purpose the grant does
  not name is refused, not replaced by the default);
- under a grant with one purpose and no default, that purpose applies the same way (chosen: the grant leaves no
  choice to make, so an X-Road client works unchanged, and the audit still says the purpose was not declared);
- under a grant with several purposes and no default, the call is refused with a message saying to send X-Purpose
  or set a default;
- the registry refuses a default that is not one of the grant's purposes (400 naming default_purpose), and a
  gateway quarantines such a grant (or one whose default is not a string) should a snapshot carry it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from lienthong.cli import main
from lienthong.redis_connection import EmbeddedRedis
from lienthong.snapshot import Snapshot
from registry.client import RegistryError
from tests.mesh_support import MESH_TLS, Mesh, call_headers

HANG = 60.0  # seconds: a bound that only catches a hang
PERSONS = "VN/GOV/BCA/population/persons"
DEFAULTED = "VN/PROV/NGHEAN/civil-status"  # purposes a, b; default a
SINGLE = "VN/PROV/NGHEAN/statistics"  # purpose a only, no default
SEVERAL = "VN/PROV/NGHEAN/planning"  # purposes a, b, no default
A, B = "birth-registration", "statistics"
PERSON = "040203004567"


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory, redis_server: EmbeddedRedis) -> Iterator[Mesh]:
    root = tmp_path_factory.mktemp("default-purpose")
    m = Mesh(root, root / "logs", policies="all", redis_url=redis_server.url.rsplit("/", 1)[0] + "/14")
    redis.Redis.from_url(m.redis_url).flushdb()
    try:
        for code in ("national", "nghean"):
            m.add_gateway(code)
        m.start_registry()
        upstream = m.start_upstream("echo")
        m.add_parties({"VN/GOV/BCA": "national", "VN/PROV/NGHEAN": "nghean"},
                      ("VN/GOV/BCA/population", DEFAULTED, SINGLE, SEVERAL), (DEFAULTED, SINGLE, SEVERAL))  # fmt: skip
        m.add_service(PERSONS, "national", upstream, [("GET", "/persons/{id}")], subject_param="id")
        m.add_grant("g-single", SINGLE, PERSONS, [A])
        m.add_grant("g-several", SEVERAL, PERSONS, [A, B])
        m.publish()
        # tests/mesh_support declares no default purpose: this grant goes through the registry's client API
        m._admin().add_grant(DEFAULTED, PERSONS, [A, B], default_purpose=A)
        version = int(m._admin().snapshot(gateway="nghean").headers["etag"].strip('W/"'))
        m.start_gateway("national")
        m.start_gateway("nghean")
        m.wait_version(version, timeout=HANG)
        yield m
    finally:
        m.stop()


def call(mesh: Mesh, client: str, purpose: str | None) -> httpx.Response:
    headers = call_headers(mesh, client, "nghean")
    if purpose is None:
        del headers["X-Purpose"]
    else:
        headers["X-Purpose"] = purpose
    url = f"{mesh.gateways['nghean'].url}/r1/{PERSONS}/persons/{PERSON}"
    return httpx.get(url, headers=headers, timeout=HANG, verify=MESH_TLS)


def audit_record(mesh: Mesh, code: str, txid: str) -> dict[str, Any]:
    """The gateway's audit record of the call, once written (the writer flushes in the background)."""
    directory: Path = mesh.gateways[code].data_dir / "audit"
    deadline = time.monotonic() + HANG
    while True:
        for path in sorted(directory.glob("*.jsonl")):
            for line in path.read_bytes().splitlines():
                if txid.encode() in line:
                    record: dict[str, Any] = orjson.loads(line)
                    if record.get("transaction_id") == txid:
                        return record
        assert time.monotonic() < deadline, f"no audit record of {txid} at {code} (a hang?)"
        time.sleep(0.1)


def test_a_default_purpose_applies_when_x_purpose_is_absent_and_the_audit_says_so(mesh: Mesh) -> None:
    r = call(mesh, DEFAULTED, None)
    assert r.status_code == 200, r.text
    record = audit_record(mesh, "nghean", r.headers["x-road-id"])
    assert record["purpose"] == A
    assert record["purpose_by_default"] is True
    keys = [k for k in record if k != "hash"]  # the writer appends the chain's hash last
    assert keys == sorted(keys)  # the record keeps its sorted keys
    # the hosting gateway checks the same purpose again, carried in the consumer gateway's assertion, and says so
    hosted = audit_record(mesh, "national", r.headers["x-road-id"])
    assert (hosted["purpose"], hosted["purpose_by_default"]) == (A, True)


def test_an_explicit_x_purpose_still_wins(mesh: Mesh) -> None:
    r = call(mesh, DEFAULTED, B)
    assert r.status_code == 200, r.text
    record = audit_record(mesh, "nghean", r.headers["x-road-id"])
    assert (record["purpose"], record["purpose_by_default"]) == (B, False)
    hosted = audit_record(mesh, "national", r.headers["x-road-id"])
    assert (hosted["purpose"], hosted["purpose_by_default"]) == (B, False)
    refused = call(mesh, DEFAULTED, "tax-audit")  # not replaced by the default: refused
    assert refused.status_code == 403, refused.text
    assert "tax-audit" in refused.json()["detail"]


def test_a_single_purpose_grant_applies_its_purpose_by_default(mesh: Mesh) -> None:
    r = call(mesh, SINGLE, None)
    assert r.status_code == 200, r.text
    record = audit_record(mesh, "nghean", r.headers["x-road-id"])
    assert (record["purpose"], record["purpose_by_default"]) == (A, True)


@pytest.mark.parametrize("purpose", [None, ""])
def test_several_purposes_and_no_default_is_refused_saying_what_to_do(mesh: Mesh, purpose: str | None) -> None:
    r = call(mesh, SEVERAL, purpose)
    assert r.status_code == 403, r.text
    body = r.json()
    assert body["field"] == "X-Purpose"
    assert "send X-Purpose" in body["detail"] and "default_purpose" in body["detail"]
    assert call(mesh, SEVERAL, B).status_code == 200  # the grant itself works with a purpose


@pytest.mark.parametrize("default", ["tax-audit", B])
def test_the_registry_refuses_a_default_that_is_not_one_of_the_purposes(mesh: Mesh, default: str) -> None:
    with pytest.raises(RegistryError) as refused:
        mesh._admin().add_grant(SINGLE, PERSONS, [A, "research"], default_purpose=default)
    assert refused.value.status == 400
    assert refused.value.problem["field"] == "default_purpose"


def test_the_registry_refuses_a_default_that_is_not_a_purpose_code(mesh: Mesh) -> None:
    with pytest.raises(RegistryError) as refused:
        mesh._admin().add_grant(SINGLE, PERSONS, [A, "research"], default_purpose=["research"])
    assert refused.value.status == 400


def test_the_cli_sets_and_the_registry_checks_a_default_purpose(mesh: Mesh) -> None:
    reg = mesh.registry_handle
    admin = ["--registry", reg.url, "--registry-ca", str(reg.ca_path), "--key", str(reg.admin_key_path),
             "--kid", reg.admin_kid]  # fmt: skip
    base = ["grants", "add", "--consumer", SEVERAL, "--service", PERSONS, "--endpoint",
            "GET /persons/{id}", "--purpose", A, "--purpose", "research"]  # fmt: skip
    refused = CliRunner().invoke(main, [*base, "--default-purpose", "tax-audit", *admin])
    assert refused.exit_code == 1 and "400" in refused.output and "default_purpose" in refused.output
    made = CliRunner().invoke(main, [*base, "--default-purpose", "research", *admin])
    assert made.exit_code == 0, made.output
    grant = orjson.loads(made.output)
    assert (grant["default_purpose"], grant["purposes"]) == ("research", sorted([A, "research"]))


def _grant_doc(grant: dict[str, Any]) -> dict[str, Any]:
    return {"version": 1, "grants": [grant]}


@settings(max_examples=200, deadline=None)
@given(
    purposes=st.lists(st.sampled_from([A, B, "c"]), unique=True),
    default=st.one_of(st.none(), st.sampled_from([A, B, "c", ""]), st.integers(), st.lists(st.just(A)), st.booleans()),
)
def test_a_gateway_quarantines_a_grant_whose_default_is_not_one_of_its_purposes(
    purposes: list[str], default: Any
) -> None:
    grant = {"id": "g-1", "consumer": SINGLE, "service": PERSONS, "purposes": purposes, "default_purpose": default}
    snap = Snapshot(_grant_doc(grant))
    good = default is None or (isinstance(default, str) and default in purposes)
    built = snap.grants.get((SINGLE, PERSONS), [])
    if good:
        (g,) = built
        assert not snap.quarantined
        assert g.default_purpose == default
        implied = default if default is not None else purposes[0] if len(purposes) == 1 else None
        assert g.implied_purpose == implied
    else:
        assert not built
        (q,) = snap.quarantined
        assert (q.kind, q.id) == ("grant", "g-1") and "default_purpose" in q.reason
