"""The insurance connector over real HTTP with real gateway assertions, on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from connectors.insurance import CONNECTOR
from connectors.rules import insurance_codes, personal_id
from connectors.schema import insurance as db
from tests.connector_support import BACKENDS, Caller, assert_problem, connector_on, created

SERVICE = CONNECTOR.service_id
ADULT = personal_id.make("040", "F", dt.date(1990, 4, 4), 222222)
SI = "4012345678"
CARD = insurance_codes.make_card("DN", 4, "040", SI)
TODAY = dt.date.today()
BORN = TODAY - dt.timedelta(days=30)
CHILD = personal_id.make("040", "M", BORN, 333333)
CARD_BODY = {
    "personal_id": CHILD,
    "full_name": "Nguyễn Văn Dũng",
    "birth_date": BORN.isoformat(),
    "sex": "M",
    "primary_care_facility_code": "40001",
    "primary_care_facility_name": "Bệnh viện Sản Nhi Nghệ An",
}


def seed(url: str) -> None:
    engine = sa.create_engine(url)
    db.metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(
            db.insured.insert().values(
                si_number=SI,
                person_id=ADULT,
                full_name="Trần Thị Bình",
                birth_date=dt.date(1990, 4, 4),
                province_code="040",
                change_seq=0,
            )
        )
        conn.execute(
            db.hi_cards.insert().values(
                code=CARD,
                si_number=SI,
                category="DN",
                benefit_level=4,
                province_code="040",
                valid_from=dt.date(2024, 1, 1),
                valid_to=dt.date(2024, 12, 31),
                primary_care_facility_code="40002",
                primary_care_facility_name="Bệnh viện Đa khoa Nghệ An",
                change_seq=0,
            )
        )
        conn.execute(db.changes.insert(), created("insured", (SI,)))
    engine.dispose()


@pytest.fixture(scope="module", params=BACKENDS)
def caller(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Caller]:
    with connector_on(CONNECTOR, request.param, tmp_path_factory.mktemp("insurance"), seed) as caller:
        yield caller


def test_insured_record_linked_to_a_personal_id(caller: Caller) -> None:
    r = caller.get(f"/insured/{SI}", fields=["person_id", "cards.code"])
    assert r.status_code == 200, r.text
    assert r.json() == {"person_id": ADULT, "cards": [{"code": CARD}]}
    assert_problem(caller.get("/insured/4099999999"), 404, "not-found")
    assert_problem(caller.get(f"/insured/{SI}", fields=["validity.valid"]), 403, "not-permitted")
    assert_problem(caller.get("/insured/0000000000"), 400, "invalid-parameter", "si_number")


def test_card_validity_on_a_date(caller: Caller) -> None:
    inside = caller.get(f"/cards/{CARD}", params={"on": "2024-06-01"}).json()
    assert inside["validity"] == {"on": "2024-06-01", "valid": True}
    assert inside["category"] == "DN" and inside["primary_care"]["code"] == "40002"
    after = caller.get(f"/cards/{CARD}", params={"on": "2025-01-01"}, fields=["validity.valid"]).json()
    assert after == {"validity": {"valid": False}}


def test_card_found_no_data_not_permitted(caller: Caller) -> None:
    assert_problem(caller.get(f"/cards/{insurance_codes.make_card('HT', 3, '001', SI)}"), 404, "not-found")
    # the grant forbids every card field: the card exists, so 403, not 404
    assert_problem(caller.get(f"/cards/{CARD}", fields=["full_name"]), 403, "not-permitted")


@pytest.mark.parametrize(
    ("code", "field"),
    [
        ("ZZ440" + SI, "code"),  # unknown category
        ("DN403" + SI, "code"),  # province 03 does not exist
        ("DN6" + "40" + SI, "code"),  # benefit level 6 (pattern)
        ("DN440" + "0000000000", "code"),  # SI number part all zeros
    ],
)
def test_every_part_of_a_card_code_is_checked(caller: Caller, code: str, field: str) -> None:
    assert_problem(caller.get(f"/cards/{code}"), 400, "invalid-parameter", field)


def test_bad_date_names_the_field(caller: Caller) -> None:
    assert_problem(caller.get(f"/cards/{CARD}", params={"on": "2024-02-30"}), 400, "invalid-parameter", "on")


def test_issue_a_te_card_for_a_child_idempotently(caller: Caller) -> None:
    key = {"Idempotency-Key": "te-card-0001"}
    first = caller.post("/cards", CARD_BODY, headers=key)
    assert first.status_code == 201, first.text
    card = first.json()
    parts = insurance_codes.parse_card(card["code"])
    assert (parts.category, parts.benefit_level, parts.province_code) == ("TE", 1, "040")
    valid_to = dt.date.fromisoformat(card["valid_to"])
    assert card["valid_from"] == TODAY.isoformat()
    assert valid_to.year == BORN.year + 6 and valid_to + dt.timedelta(days=1) >= BORN.replace(year=BORN.year + 6)
    again = caller.post("/cards", CARD_BODY, headers=key)
    assert again.status_code == 201 and again.json() == card
    assert_problem(
        caller.post("/cards", {**CARD_BODY, "full_name": "X"}, headers=key), 409, "conflict", "Idempotency-Key"
    )
    # a new key for the same child: the card exists already
    assert_problem(
        caller.post("/cards", CARD_BODY, headers={"Idempotency-Key": "te-card-0002"}), 409, "conflict", "personal_id"
    )
    looked_up = caller.get(f"/cards/{card['code']}", fields=["validity.valid", "category"]).json()
    assert looked_up == {"category": "TE", "validity": {"valid": True}}


def test_te_card_refuses_bad_input(caller: Caller) -> None:
    def post(body: dict[str, object], n: int) -> object:
        return caller.post("/cards", body, headers={"Idempotency-Key": f"te-card-bad-{n:04d}"})

    old = dt.date(TODAY.year - 7, 1, 1)
    older = {**CARD_BODY, "personal_id": personal_id.make("040", "M", old, 1), "birth_date": old.isoformat()}
    assert_problem(post(older, 1), 400, "invalid-body", "birth_date")
    assert_problem(post({**CARD_BODY, "sex": "F"}, 2), 400, "invalid-parameter", "personal_id")
    assert_problem(
        post({**CARD_BODY, "primary_care_facility_code": "x"}, 3), 400, "invalid-body", "primary_care_facility_code"
    )
    assert_problem(post({**CARD_BODY, "province_code": "003"}, 4), 400, "invalid-parameter", "province_code")


def test_changes(caller: Caller) -> None:
    body = caller.get("/changes", params={"limit": 1}).json()
    assert body["changes"][0] == {
        "seq": 1,
        "entity": "insured",
        "id": SI,
        "op": "create",
        "at": "2024-01-01T00:00:00+00:00",
    }
