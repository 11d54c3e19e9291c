"""The business registry connector over real HTTP with real gateway assertions, on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from connectors.business_registry import CONNECTOR
from connectors.rules import enterprise_code, personal_id
from connectors.rules.vietnamese import fold
from connectors.schema import business as db
from tests.connector_support import BACKENDS, Caller, assert_problem, connector_on, created

SERVICE = CONNECTOR.service_id
REP = personal_id.make("040", "M", dt.date(1980, 1, 1), 111111)


def _codes(n: int) -> list[str]:
    out, i = [], 10_000_000
    while len(out) < n:
        i += 1
        try:
            out.append(enterprise_code.make(f"0{i}"))
        except enterprise_code.InvalidEnterpriseCode:
            continue
    return out


HOA_BINH, SONG_DA, TRANG_AN, UNKNOWN = _codes(4)
BRANCH = enterprise_code.make_branch(HOA_BINH, 1)
BAD_CHECK = HOA_BINH[:9] + str((int(HOA_BINH[9]) + 1) % 10)


def _enterprise(code: str, name: str, status: str = "active", parent: str | None = None) -> dict[str, object]:
    return {
        "code": code,
        "parent_code": parent,
        "name": name,
        "name_folded": fold(name),
        "legal_status": status,
        "head_office": "1 Quang Trung, Vinh, Nghệ An",
        "province_code": "040",
        "legal_rep_name": "Nguyễn Văn An",
        "legal_rep_id": REP,
        "legal_rep_nationality": "VN",
        "charter_capital": 5_000_000_000,
        "registered_on": dt.date(2015, 3, 1),
        "change_seq": 0,
    }


def seed(url: str) -> None:
    engine = sa.create_engine(url)
    db.metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(
            db.enterprises.insert(),
            [
                _enterprise(HOA_BINH, "Công ty TNHH Hòa Bình"),
                _enterprise(SONG_DA, "Công ty Cổ phần Sông Đà Nghệ An", "suspended"),
                _enterprise(TRANG_AN, "Công ty TNHH Tràng An Hòa Bình", "in_bankruptcy"),
                _enterprise(BRANCH, "Chi nhánh Công ty TNHH Hòa Bình tại Hà Tĩnh", parent=HOA_BINH),
            ],
        )
        conn.execute(
            db.owners.insert(),
            [
                {
                    "enterprise_code": HOA_BINH,
                    "name": "Nguyễn Văn An",
                    "personal_id": REP,
                    "owner_enterprise_code": None,
                    "share": 60.0,
                },
                {
                    "enterprise_code": HOA_BINH,
                    "name": "Công ty Cổ phần Sông Đà Nghệ An",
                    "personal_id": None,
                    "owner_enterprise_code": SONG_DA,
                    "share": 40.0,
                },
            ],
        )
        conn.execute(db.changes.insert(), created("enterprise", (HOA_BINH, SONG_DA, TRANG_AN)))
    engine.dispose()


@pytest.fixture(scope="module", params=BACKENDS)
def caller(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Caller]:
    with connector_on(CONNECTOR, request.param, tmp_path_factory.mktemp("business"), seed) as caller:
        yield caller


def test_enterprise_with_owners_and_status(caller: Caller) -> None:
    r = caller.get(f"/enterprises/{HOA_BINH}")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["name"] == "Công ty TNHH Hòa Bình" and body["charter_capital"] == 5_000_000_000
    assert body["legal_status"] == {"code": "active", "label": "Đang hoạt động"}
    assert body["legal_representative"] == {"name": "Nguyễn Văn An", "id": REP, "nationality": "VN"}
    assert [o["share"] for o in body["owners"]] == [60.0, 40.0]
    assert body["owners"][1]["enterprise_code"] == SONG_DA


def test_only_granted_fields_are_read(caller: Caller) -> None:
    r = caller.get(f"/enterprises/{SONG_DA}", fields=["name", "legal_status.code"])
    assert r.json() == {"name": "Công ty Cổ phần Sông Đà Nghệ An", "legal_status": {"code": "suspended"}}


def test_branch_by_its_13_character_code(caller: Caller) -> None:
    r = caller.get(f"/enterprises/{BRANCH}", fields=["code", "parent_code"])
    assert r.json() == {"code": BRANCH, "parent_code": HOA_BINH}


def test_found_no_data_not_permitted(caller: Caller) -> None:
    assert_problem(caller.get(f"/enterprises/{UNKNOWN}"), 404, "not-found")
    assert_problem(caller.get(f"/enterprises/{HOA_BINH}", fields=["full_name"]), 403, "not-permitted")


@pytest.mark.parametrize("code", [BAD_CHECK, "12345", f"{HOA_BINH}-000", f"{HOA_BINH}-1"])
def test_bad_codes_are_400_naming_the_field(caller: Caller, code: str) -> None:
    assert_problem(caller.get(f"/enterprises/{code}"), 400, "invalid-parameter", "code")


def test_search_ignores_diacritics_and_case(caller: Caller) -> None:
    r = caller.get("/enterprises", params={"name": "HOA binh"}, fields=["items.code", "items.name", "total"])
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["total"] == 3
    assert {i["code"] for i in body["items"]} == {HOA_BINH, TRANG_AN, BRANCH}
    page2 = caller.get("/enterprises", params={"name": "hòa bình", "page": 2, "page_size": 2}).json()
    assert len(page2["items"]) == 1 and page2["page"] == 2
    assert caller.get("/enterprises", params={"name": "sông đà"}).json()["items"][0]["code"] == SONG_DA
    none = caller.get("/enterprises", params={"name": "100%_x"}).json()
    assert none == {"items": [], "page": 1, "page_size": 20, "total": 0}


def test_search_bad_input_names_the_field(caller: Caller) -> None:
    assert_problem(
        caller.get("/enterprises", params={"name": "hoa", "page_size": 101}), 400, "invalid-parameter", "page_size"
    )
    assert_problem(caller.get("/enterprises", params={"name": "hoa", "page": 0}), 400, "invalid-parameter", "page")
    assert_problem(caller.get("/enterprises"), 400, "invalid-parameter", "name")
    assert_problem(caller.get("/enterprises", params={"name": "  ~ "}), 400, "invalid-parameter", "name")


def test_changes(caller: Caller) -> None:
    body = caller.get("/changes", params={"since": "1"}).json()
    assert [c["id"] for c in body["changes"]] == [SONG_DA, TRANG_AN] and body["has_more"] is False
    assert caller.get("/changes", params={"since": body["next_cursor"]}).json()["changes"] == []
