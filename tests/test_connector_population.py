"""The population connector over real HTTP with real gateway assertions, on SQLite and PostgreSQL (protocol §6)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from connectors.population import CONNECTOR
from connectors.rules import personal_id
from connectors.schema import population as db
from tests.connector_support import BACKENDS, Caller, assert_problem, connector_on, created

SERVICE = CONNECTOR.service_id
FATHER = personal_id.make("040", "M", dt.date(1985, 3, 2), 123456)
MOTHER = personal_id.make("040", "F", dt.date(1988, 7, 9), 234567)
CHILD = personal_id.make("040", "F", dt.date(2020, 1, 15), 345678)
SECRET = personal_id.make("001", "M", dt.date(1970, 5, 5), 456789)  # a restricted record
BROKEN = personal_id.make("001", "M", dt.date(1990, 5, 5), 567890)  # the record says F: disagrees with its ID
UNKNOWN = personal_id.make("040", "M", dt.date(1999, 1, 1), 999999)
HOUSEHOLD = "HH040000001"


def _person(pid: str, name: str, born: dt.date, sex: str, **extra: object) -> dict[str, object]:
    row: dict[str, object] = {
        "id": pid,
        "full_name": name,
        "birth_date": born,
        "sex": sex,
        "birth_place": "Vinh, Nghệ An",
        "birth_registration_province": pid[:3],
        "hometown": "Nghi Lộc, Nghệ An",
        "ethnicity": "Kinh",
        "religion": "Không",
        "nationality": "VN",
        "marital_status": "married",
        "household_id": HOUSEHOLD,
        "relation_to_head": "other",
        "restricted": False,
        "change_seq": 0,
        "phone": "0912345678",
        "spouse_id": None,
        "father_id": None,
        "mother_id": None,
    }
    row.update(extra)
    return row


def seed(url: str) -> None:
    engine = sa.create_engine(url)
    db.metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(
            db.households.insert(),
            [
                {"id": HOUSEHOLD, "head_id": FATHER, "address": "Xóm 3, Nghi Phú, Vinh", "province_code": "040"},
            ],
        )
        conn.execute(
            db.persons.insert(),
            [
                _person(FATHER, "Nguyễn Văn An", dt.date(1985, 3, 2), "M", relation_to_head="head", spouse_id=MOTHER),
                _person(MOTHER, "Trần Thị Bình", dt.date(1988, 7, 9), "F", relation_to_head="spouse", spouse_id=FATHER),
                _person(
                    CHILD,
                    "Nguyễn Thị Cúc",
                    dt.date(2020, 1, 15),
                    "F",
                    relation_to_head="child",
                    father_id=FATHER,
                    mother_id=MOTHER,
                    marital_status="single",
                ),
                _person(SECRET, "Lê Văn Mật", dt.date(1970, 5, 5), "M", restricted=True, household_id=None),
                _person(BROKEN, "Phạm Thị Lỗi", dt.date(1990, 5, 5), "F", household_id=None),
            ],
        )
        conn.execute(
            db.residence.insert(),
            [
                {
                    "person_id": FATHER,
                    "kind": "permanent",
                    "address": "12 Hàng Bạc, Hà Nội",
                    "province_code": "001",
                    "valid_from": dt.date(2003, 1, 1),
                    "valid_to": dt.date(2015, 6, 30),
                },
                {
                    "person_id": FATHER,
                    "kind": "permanent",
                    "address": "Xóm 3, Nghi Phú, Vinh",
                    "province_code": "040",
                    "valid_from": dt.date(2015, 7, 1),
                    "valid_to": None,
                },
                {
                    "person_id": FATHER,
                    "kind": "temporary",
                    "address": "5 Lê Lợi, Huế",
                    "province_code": "046",
                    "valid_from": dt.date(2010, 1, 1),
                    "valid_to": dt.date(2012, 1, 1),
                },
            ],
        )
        conn.execute(db.changes.insert(), created("person", (FATHER, MOTHER, CHILD)))
    engine.dispose()


@pytest.fixture(scope="module", params=BACKENDS)
def caller(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Caller]:
    with connector_on(CONNECTOR, request.param, tmp_path_factory.mktemp("population"), seed) as caller:
        yield caller


def test_found_with_only_granted_fields(caller: Caller) -> None:
    r = caller.get(f"/persons/{FATHER}", fields=["full_name", "household.id", "residence.permanent.address"])
    assert r.status_code == 200, r.text
    assert r.json() == {
        "full_name": "Nguyễn Văn An",
        "household": {"id": HOUSEHOLD},
        "residence": {"permanent": {"address": "Xóm 3, Nghi Phú, Vinh"}},
    }


def test_all_fields_when_the_grant_names_none(caller: Caller) -> None:
    body = caller.get(f"/persons/{CHILD}").json()
    assert body["id"] == CHILD and body["sex"] == "F" and body["birth_date"] == "2020-01-15"
    assert body["father"] == {"id": FATHER} and body["mother"] == {"id": MOTHER}
    assert body["residence"]["permanent"] is None  # no residence row on file for the child


def test_no_data_is_404_and_not_permitted_is_403(caller: Caller) -> None:
    assert_problem(caller.get(f"/persons/{UNKNOWN}"), 404, "not-found")
    assert_problem(caller.get(f"/persons/{SECRET}"), 403, "not-permitted")
    # the record exists but the grant allows none of the person's fields
    assert_problem(caller.get(f"/persons/{FATHER}", fields=["match"]), 403, "not-permitted")
    # no data stays 404 even when the grant would forbid everything: existence is checked first
    assert_problem(caller.get(f"/persons/{UNKNOWN}", fields=["match"]), 404, "not-found")


def test_a_record_that_disagrees_with_its_id_is_not_served(caller: Caller) -> None:
    assert_problem(caller.get(f"/persons/{BROKEN}"), 404, "not-found")


@pytest.mark.parametrize(
    ("pid", "why"),
    [("12345", "shape"), ("003085123456", "province 003 is not in the official list"), ("040985123456", "future")],
)
def test_malformed_ids_are_400_naming_the_field(caller: Caller, pid: str, why: str) -> None:
    del why
    assert_problem(caller.get(f"/persons/{pid}"), 400, "invalid-parameter", "id")


def test_verify_answers_match_or_no_match_only(caller: Caller) -> None:
    ok = caller.post("/persons/verify", {"id": FATHER, "full_name": "nguyễn  văn an", "birth_date": "1985-03-02"})
    assert ok.status_code == 200 and ok.json() == {"match": True}
    wrong_date = caller.post(
        "/persons/verify", {"id": FATHER, "full_name": "Nguyễn Văn An", "birth_date": "1985-03-03"}
    )
    assert wrong_date.json() == {"match": False}
    no_diacritics = caller.post(
        "/persons/verify", {"id": FATHER, "full_name": "Nguyen Van An", "birth_date": "1985-03-02"}
    )
    assert no_diacritics.json() == {"match": False}
    unknown = caller.post("/persons/verify", {"id": UNKNOWN, "full_name": "X", "birth_date": "1999-01-01"})
    assert unknown.json() == {"match": False}
    assert_problem(
        caller.post("/persons/verify", {"id": FATHER, "full_name": "X", "birth_date": "1985-02-30"}),
        400,
        "invalid-parameter",
        "birth_date",
    )
    assert_problem(caller.post("/persons/verify", {"id": FATHER, "full_name": "X"}), 400, "invalid-body", "birth_date")


def test_household_members(caller: Caller) -> None:
    r = caller.get(f"/households/{HOUSEHOLD}/members", fields=["id", "members.id", "members.relation_to_head"])
    assert r.status_code == 200, r.text
    assert r.json() == {
        "id": HOUSEHOLD,
        "members": [
            {"id": FATHER, "relation_to_head": "head"},
            {"id": MOTHER, "relation_to_head": "spouse"},
            {"id": CHILD, "relation_to_head": "child"},
        ],
    }
    assert_problem(caller.get("/households/HH999/members"), 404, "not-found")
    assert_problem(caller.get(f"/households/{HOUSEHOLD}/members", fields=["full_name"]), 403, "not-permitted")
    assert_problem(caller.get("/households/bad%20id/members"), 400, "invalid-parameter", "id")


def test_batch_tells_each_id_apart(caller: Caller) -> None:
    ids = [FATHER, UNKNOWN, "nonsense", SECRET, CHILD]
    r = caller.post("/persons/batch", {"ids": ids}, fields=["results.id", "results.status", "results.person.full_name"])
    assert r.status_code == 200, r.text
    assert r.json()["results"] == [
        {"id": FATHER, "status": "found", "person": {"full_name": "Nguyễn Văn An"}},
        {"id": UNKNOWN, "status": "not_found"},
        {"id": "nonsense", "status": "invalid"},
        {"id": SECRET, "status": "not_permitted"},
        {"id": CHILD, "status": "found", "person": {"full_name": "Nguyễn Thị Cúc"}},
    ]
    assert_problem(caller.post("/persons/batch", {"ids": [FATHER] * 1001}), 400, "invalid-body", "ids")
    assert_problem(caller.post("/persons/batch", {"ids": []}), 400, "invalid-body", "ids")


def test_batch_of_a_thousand(caller: Caller) -> None:
    ids = [FATHER, MOTHER] * 500
    r = caller.post("/persons/batch", {"ids": ids}, fields=["results.status", "results.person.id"])
    assert r.status_code == 200
    assert [x["status"] for x in r.json()["results"]] == ["found"] * 1000


def test_residence_history(caller: Caller) -> None:
    past = caller.get(f"/persons/{FATHER}/residence", params={"at": "2011-05-01"})
    assert past.status_code == 200, past.text
    res = past.json()["residence"]
    assert res["permanent"]["address"] == "12 Hàng Bạc, Hà Nội"
    assert res["temporary"]["address"] == "5 Lê Lợi, Huế"
    now = caller.get(f"/persons/{FATHER}/residence", params={"at": "2024-01-01"}).json()["residence"]
    assert now["permanent"]["province_code"] == "040" and now["temporary"] is None
    assert_problem(caller.get(f"/persons/{FATHER}/residence", params={"at": "1990-01-01"}), 404, "not-found")
    assert_problem(
        caller.get(f"/persons/{FATHER}/residence", params={"at": "2024-13-01"}), 400, "invalid-parameter", "at"
    )


def test_changes_cursor(caller: Caller) -> None:
    first = caller.get("/changes", params={"since": "0", "limit": 2}).json()
    assert [c["id"] for c in first["changes"]] == [FATHER, MOTHER] and first["has_more"] is True
    rest = caller.get("/changes", params={"since": first["next_cursor"], "limit": 2}).json()
    assert rest["changes"][0]["id"] == CHILD
    assert_problem(caller.get("/changes", params={"since": "abc"}), 400, "invalid-parameter", "since")
    assert_problem(caller.get("/changes", params={"limit": 0}), 400, "invalid-parameter", "limit")
    assert_problem(caller.get("/changes", params={"limit": "x"}), 400, "invalid-parameter", "limit")


def test_register_a_newborn_idempotently(caller: Caller) -> None:
    born = (dt.date.today() - dt.timedelta(days=10)).isoformat()
    body = {
        "full_name": "Nguyễn Văn Dũng",
        "sex": "M",
        "birth_date": born,
        "birth_place": "Vinh",
        "registration_province": "040",
        "household_id": HOUSEHOLD,
        "father_id": FATHER,
        "mother_id": MOTHER,
    }
    key = {"Idempotency-Key": "birth-0001-abcdef"}
    first = caller.post("/births", body, headers=key)
    assert first.status_code == 201, first.text
    pid = first.json()["id"]
    parts = personal_id.parse(pid)
    assert (parts.province, parts.sex, parts.birth_year) == ("040", "M", int(born[:4]))
    again = caller.post("/births", body, headers=key)
    assert again.status_code == 201 and again.json() == first.json()
    assert_problem(
        caller.post("/births", {**body, "full_name": "Other"}, headers=key), 409, "conflict", "Idempotency-Key"
    )
    person = caller.get(f"/persons/{pid}", fields=["household.id", "father.id", "residence.permanent.address"]).json()
    assert person == {
        "household": {"id": HOUSEHOLD},
        "father": {"id": FATHER},
        "residence": {"permanent": {"address": "Xóm 3, Nghi Phú, Vinh"}},
    }
    assert_problem(caller.post("/births", body), 400, "invalid-parameter", "Idempotency-Key")
    other = {**body, "household_id": "HH404"}
    assert_problem(
        caller.post("/births", other, headers={"Idempotency-Key": "birth-0002-abcdef"}),
        404,
        "not-found",
        "household_id",
    )
    assert_problem(
        caller.post(
            "/births", {**body, "registration_province": "003"}, headers={"Idempotency-Key": "birth-0003-abcdef"}
        ),
        400,
        "invalid-parameter",
        "registration_province",
    )


def test_interleaved_grants_never_see_each_others_fields(caller: Caller) -> None:
    """The connector caches granted paths and SELECTs per grant shape; a cache keyed wrongly would leak fields."""
    narrow, wide = ["full_name"], ["full_name", "birth_date", "household.id"]
    for fields in (narrow, wide, narrow, wide, narrow):
        r = caller.get(f"/persons/{FATHER}", fields=fields)
        assert r.status_code == 200, r.text
        body = r.json()
        if fields == narrow:
            assert body == {"full_name": "Nguyễn Văn An"}
        else:
            assert set(body) == {"full_name", "birth_date", "household"} and body["household"] == {"id": HOUSEHOLD}


def test_answers_are_compact_utf8_json(caller: Caller) -> None:
    r = caller.get(f"/persons/{FATHER}", fields=["full_name"])
    assert r.headers["content-type"].startswith("application/json")
    assert r.content == '{"full_name":"Nguyễn Văn An"}'.encode()
