"""The provincial civil-status connector (the README's example) over real HTTP, on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import pytest

from connectors.civil_status import CONNECTOR
from connectors.rules import insurance_codes, personal_id
from tests.connector_support import BACKENDS, Caller, assert_problem, connector_on

SERVICE = CONNECTOR.service_id
BORN = dt.date.today() - dt.timedelta(days=5)
FATHER = personal_id.make("040", "M", dt.date(1985, 3, 2), 123456)
BODY = {
    "child_name": "Nguyễn Văn Dũng",
    "sex": "M",
    "birth_date": BORN.isoformat(),
    "birth_place": "Vinh",
    "father_id": FATHER,
}


@pytest.fixture(scope="module", params=BACKENDS)
def caller(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Caller]:
    with connector_on(CONNECTOR, request.param, tmp_path_factory.mktemp("civil")) as caller:
        yield caller


def test_record_then_read_a_birth(caller: Caller) -> None:
    key = {"Idempotency-Key": "birth-nghean-0001"}
    first = caller.post("/births", BODY, headers=key)
    assert first.status_code == 201, first.text
    birth = first.json()
    assert birth["id"].startswith("KS040") and birth["personal_id"] is None
    assert dt.datetime.fromisoformat(birth["registered_at"]).tzinfo is not None
    assert caller.post("/births", BODY, headers=key).json() == birth
    assert_problem(caller.post("/births", {**BODY, "sex": "F"}, headers=key), 409, "conflict", "Idempotency-Key")
    read = caller.get(f"/births/{birth['id']}", fields=["child_name", "father_id"])
    assert read.json() == {"child_name": "Nguyễn Văn Dũng", "father_id": FATHER}
    assert_problem(caller.get(f"/births/{birth['id']}", fields=["full_name"]), 403, "not-permitted")
    assert_problem(caller.get("/births/KS040999999999"), 404, "not-found")


def test_complete_a_birth_with_id_and_card(caller: Caller) -> None:
    birth = caller.post("/births", BODY, headers={"Idempotency-Key": "birth-nghean-0002"}).json()
    pid = personal_id.make("040", "M", BORN, 777)
    card = insurance_codes.make_card("TE", 1, "040", "4000000777")
    done = caller.http.patch(
        f"/births/{birth['id']}", json={"personal_id": pid, "hi_card_code": card}, headers=caller.headers()
    )
    assert done.status_code == 200, done.text
    assert (done.json()["personal_id"], done.json()["hi_card_code"]) == (pid, card)
    other = personal_id.make("040", "M", BORN, 778)
    r = caller.http.patch(f"/births/{birth['id']}", json={"personal_id": other}, headers=caller.headers())
    assert_problem(r, 409, "conflict", "personal_id")


def test_bad_input_names_the_field(caller: Caller) -> None:
    def post(body: dict[str, object], n: int) -> object:
        return caller.post("/births", body, headers={"Idempotency-Key": f"birth-bad-{n:04d}"})

    assert_problem(post({**BODY, "birth_date": "2024-02-31"}, 1), 400, "invalid-parameter", "birth_date")
    future = (dt.date.today() + dt.timedelta(days=2)).isoformat()
    assert_problem(post({**BODY, "birth_date": future}, 2), 400, "invalid-body", "birth_date")
    assert_problem(post({**BODY, "father_id": "003085123456"}, 3), 400, "invalid-parameter", "father_id")
    assert_problem(post({k: v for k, v in BODY.items() if k != "sex"}, 4), 400, "invalid-body", "sex")
    assert_problem(caller.get("/births/123"), 400, "invalid-parameter", "id")
    wrong_sex = personal_id.make("040", "F", BORN, 779)
    birth = post(BODY, 5).json()  # type: ignore[attr-defined]
    r = caller.http.patch(f"/births/{birth['id']}", json={"personal_id": wrong_sex}, headers=caller.headers())
    assert_problem(r, 400, "invalid-parameter", "personal_id")
