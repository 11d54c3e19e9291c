"""Handlers of openapi/insurance.yaml, one per operationId. Each reads only the columns the grant lets out."""

from __future__ import annotations

import datetime as dt
import secrets
from typing import Any

from sqlalchemy import Connection, select

from connectors.rules import insurance_codes, personal_id, provinces
from connectors.schema.insurance import changes, hi_cards, insured
from connectors.sdk import current_call, current_runtime, nest, not_found, not_permitted, run_idempotent
from connectors.sdk.changes import changes_page, record_change
from connectors.sdk.inputs import checked, parse_cursor, parse_date
from connectors.sdk.values import json_value
from lienthong.problem import Problem, bad_request

INSURED_COLUMNS: dict[str, Any] = {
    "si_number": insured.c.si_number,
    "person_id": insured.c.person_id,
    "full_name": insured.c.full_name,
    "birth_date": insured.c.birth_date,
    "province_code": insured.c.province_code,
}
INSURED_CARD_COLUMNS: dict[str, Any] = {
    "cards.code": hi_cards.c.code,
    "cards.valid_from": hi_cards.c.valid_from,
    "cards.valid_to": hi_cards.c.valid_to,
}
CARD_COLUMNS: dict[str, Any] = {
    "code": hi_cards.c.code,
    "si_number": hi_cards.c.si_number,
    "category": hi_cards.c.category,
    "benefit_level": hi_cards.c.benefit_level,
    "province_code": hi_cards.c.province_code,
    "valid_from": hi_cards.c.valid_from,
    "valid_to": hi_cards.c.valid_to,
    "primary_care.code": hi_cards.c.primary_care_facility_code,
    "primary_care.name": hi_cards.c.primary_care_facility_name,
}
CARD_PATHS = (*CARD_COLUMNS, "validity.on", "validity.valid")
CHILD_AGE_LIMIT = 6


def getInsured(si_number: str) -> dict[str, Any]:
    si = checked(insurance_codes.validate_si_number, si_number, "si_number")
    call = current_call()
    granted = call.granted(INSURED_COLUMNS)
    card_paths = call.granted(INSURED_CARD_COLUMNS)
    with current_runtime().engine.connect() as conn:
        cols = [INSURED_COLUMNS[p].label(p) for p in granted]
        row = (
            conn.execute(select(insured.c.si_number.label("_si"), *cols).where(insured.c.si_number == si))
            .mappings()
            .first()
        )
        if row is None:
            raise not_found("no social insurance record has this number")
        if not granted and not card_paths:
            raise not_permitted()
        doc = {k: json_value(v) for k, v in row.items() if not k.startswith("_")}
        if card_paths:
            ccols = [INSURED_CARD_COLUMNS[p].label(p.split(".", 1)[1]) for p in card_paths]
            rows = conn.execute(select(*ccols).where(hi_cards.c.si_number == si).order_by(hi_cards.c.valid_from))
            doc["cards"] = [{k: json_value(v) for k, v in r.items()} for r in rows.mappings()]
    return doc


def _valid_on(valid_from: dt.date, valid_to: dt.date | None, day: dt.date) -> bool:
    return valid_from <= day and (valid_to is None or day <= valid_to)


def getCard(code: str, on: str | None = None) -> dict[str, Any]:
    checked(insurance_codes.parse_card, code, "code")
    day = parse_date(on, "on") if on is not None else dt.date.today()
    granted = current_call().granted(CARD_PATHS)
    cols = [CARD_COLUMNS[p].label(p) for p in granted if p in CARD_COLUMNS]
    with current_runtime().engine.connect() as conn:
        row = (
            conn.execute(
                select(hi_cards.c.valid_from.label("_from"), hi_cards.c.valid_to.label("_to"), *cols).where(
                    hi_cards.c.code == code
                )
            )
            .mappings()
            .first()
        )
    if row is None:
        raise not_found("no health insurance card has this code")
    if not granted:
        raise not_permitted("the grant allows none of the card's fields")
    doc = nest({k: json_value(v) for k, v in row.items() if not k.startswith("_")})
    validity = {"on": day.isoformat(), "valid": _valid_on(row["_from"], row["_to"], day)}
    kept = {k: v for k, v in validity.items() if f"validity.{k}" in granted}
    if kept:
        doc["validity"] = kept
    return doc


def getChanges(since: str = "0", limit: int = 100) -> dict[str, Any]:
    return changes_page(current_runtime().engine, changes, parse_cursor(since), limit)


def _sixth_birthday(born: dt.date) -> dt.date:
    try:
        return born.replace(year=born.year + CHILD_AGE_LIMIT)
    except ValueError:  # born on 29 February
        return dt.date(born.year + CHILD_AGE_LIMIT, 3, 1)


def _new_si_number(conn: Connection) -> str:
    for _ in range(50):
        si = f"{secrets.randbelow(9_000_000_000) + 1_000_000_000}"
        if conn.execute(select(insured.c.si_number).where(insured.c.si_number == si)).first() is None:
            return si
    raise Problem(409, "conflict", "no free social insurance number was found; retry the request")


def issueChildCard(body: dict[str, Any]) -> tuple[Any, int, dict[str, str]]:
    from connexion import request

    key = request.headers.get("idempotency-key", "")
    born = parse_date(body.get("birth_date"), "birth_date")
    pid = checked(personal_id.validate, body.get("personal_id"), "personal_id")
    try:
        personal_id.check_against(pid, str(body.get("sex")), born, "personal_id")
    except personal_id.InvalidPersonalId as exc:
        raise exc.to_problem() from None
    today = dt.date.today()
    if born > today:
        raise bad_request("birth_date", "birth_date is in the future", "invalid-body")
    if today >= _sixth_birthday(born):
        raise bad_request("birth_date", "a TE card is for a child under 6", "invalid-body")
    province = checked(provinces.validate, body.get("province_code", pid[:3]), "province_code")
    if not current_call().allows("code"):
        # Refuse before writing: a card the consumer may not see must not be issued on its behalf.
        raise not_permitted("the grant does not let this consumer see the card it would issue")

    def work(conn: Connection) -> tuple[int, dict[str, Any]]:
        person = conn.execute(select(insured.c.si_number).where(insured.c.person_id == pid)).first()
        if person is None:
            si = _new_si_number(conn)
            seq = record_change(conn, changes, "insured", si, "create")
            conn.execute(
                insured.insert().values(
                    si_number=si,
                    person_id=pid,
                    full_name=body["full_name"],
                    birth_date=born,
                    province_code=province,
                    change_seq=seq,
                )
            )
        else:
            si = person.si_number
            held = conn.execute(
                select(hi_cards.c.valid_to, hi_cards.c.valid_from).where(
                    hi_cards.c.si_number == si, hi_cards.c.category == insurance_codes.CHILD_CATEGORY
                )
            ).all()
            if any(_valid_on(h.valid_from, h.valid_to, today) for h in held):
                raise Problem(409, "conflict", "this child already holds a valid TE card", field="personal_id")
        level = insurance_codes.CATEGORIES[insurance_codes.CHILD_CATEGORY]
        code = insurance_codes.make_card(insurance_codes.CHILD_CATEGORY, level, province, si)
        valid_to = _sixth_birthday(born) - dt.timedelta(days=1)
        values = {
            "si_number": si,
            "category": insurance_codes.CHILD_CATEGORY,
            "benefit_level": level,
            "province_code": province,
            "valid_from": today,
            "valid_to": valid_to,
            "primary_care_facility_code": body["primary_care_facility_code"],
            "primary_care_facility_name": body["primary_care_facility_name"],
        }
        if conn.execute(select(hi_cards.c.code).where(hi_cards.c.code == code)).first() is None:
            values["change_seq"] = record_change(conn, changes, "hi_card", code, "create")
            conn.execute(hi_cards.insert().values(code=code, **values))
        else:  # an expired card under the same code is renewed, not duplicated
            values["change_seq"] = record_change(conn, changes, "hi_card", code, "update")
            conn.execute(hi_cards.update().where(hi_cards.c.code == code).values(**values))
        card = {
            "code": code,
            "si_number": si,
            "category": insurance_codes.CHILD_CATEGORY,
            "benefit_level": level,
            "province_code": province,
            "valid_from": today.isoformat(),
            "valid_to": valid_to.isoformat(),
            "primary_care": {"code": body["primary_care_facility_code"], "name": body["primary_care_facility_name"]},
        }
        return 201, card

    return run_idempotent("issueChildCard", key, body, work)
