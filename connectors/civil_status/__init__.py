"""Nghe An's civil status connector (birth registrations): the provincial example of a whole connector in one
module. It is the definition below, one plain function per operationId of openapi/civil-status.yaml, and the table
it reads (connectors.schema.civil_status)."""

from __future__ import annotations

import datetime as dt
import secrets
from typing import Any

from connexion import request
from sqlalchemy import Connection, select

from connectors.rules import insurance_codes, personal_id
from connectors.schema import civil_status as schema
from connectors.sdk import (
    OPENAPI_DIR,
    ConnectorDefinition,
    current_call,
    current_runtime,
    not_found,
    not_permitted,
    run_idempotent,
)
from connectors.sdk.changes import record_change
from connectors.sdk.inputs import checked, parse_date
from connectors.sdk.values import json_value
from lienthong.problem import Problem, bad_request

CONNECTOR = ConnectorDefinition(
    name="civil-status",
    service_id="VN/PROV/NGHEAN/civil-status/births",
    spec_path=OPENAPI_DIR / "civil-status.yaml",
    handlers=__name__,
    title="Nghe An civil status: birth registrations",
    description="Birth registrations of Nghe An, with the personal ID and TE card issued for each child.",
    metadata=(schema.metadata,),
)
PROVINCE = "040"  # Nghe An: this register holds the births registered here
births = schema.births
FIELDS = tuple(str(c.name) for c in births.columns if c.name != "change_seq")


def _doc(row: Any, fields: list[str]) -> dict[str, Any]:
    return {f: json_value(row[f]) for f in fields}


def recordBirth(body: dict[str, Any]) -> tuple[Any, int, dict[str, str]]:
    born = parse_date(body.get("birth_date"), "birth_date")
    if born > dt.date.today():
        raise bad_request("birth_date", "birth_date is in the future", "invalid-body")
    parents = {f: checked(personal_id.validate, body[f], f) for f in ("father_id", "mother_id") if f in body}

    def work(conn: Connection) -> tuple[int, dict[str, Any]]:
        while True:  # 10^9 serials per province: a collision is rare, and then another draw is free
            birth_id = f"KS{PROVINCE}{secrets.randbelow(10**9):09d}"
            if conn.execute(select(births.c.id).where(births.c.id == birth_id)).first() is None:
                break
        row = {
            "id": birth_id, "province_code": PROVINCE, "child_name": body["child_name"], "sex": body["sex"],
            "birth_date": born, "birth_place": body["birth_place"], "father_id": parents.get("father_id"),
            "mother_id": parents.get("mother_id"), "registered_at": dt.datetime.now(dt.UTC), "personal_id": None,
            "hi_card_code": None,
        }  # fmt: skip
        seq = record_change(conn, schema.changes, "birth", birth_id, "create")
        conn.execute(births.insert().values(**row, change_seq=seq))
        return 201, _doc(row, list(FIELDS))

    key = request.headers.get("idempotency-key", "")
    return run_idempotent("recordBirth", key, body, work)


def getBirth(id: str) -> dict[str, Any]:
    granted = current_call().granted(FIELDS)
    with current_runtime().engine.connect() as conn:
        row = (
            conn.execute(select(births).where(births.c.id == id, births.c.province_code == PROVINCE)).mappings().first()
        )
    if row is None:
        raise not_found("no birth registration has this id")
    if not granted:
        raise not_permitted()
    return _doc(row, granted)


def completeBirth(id: str, body: dict[str, Any]) -> dict[str, Any]:
    changes: dict[str, Any] = {}
    if "personal_id" in body:
        changes["personal_id"] = checked(personal_id.validate, body["personal_id"], "personal_id")
    if "hi_card_code" in body:
        changes["hi_card_code"] = checked(insurance_codes.validate_card, body["hi_card_code"], "hi_card_code")
    with current_runtime().engine.begin() as conn:
        row = (
            conn.execute(select(births).where(births.c.id == id, births.c.province_code == PROVINCE)).mappings().first()
        )
        if row is None:
            raise not_found("no birth registration has this id")
        for name, value in changes.items():
            if row[name] is not None and row[name] != value:
                raise Problem(409, "conflict", f"the birth already has another {name}", field=name)
        if "personal_id" in changes:
            parts = personal_id.parse(changes["personal_id"], "personal_id")
            if parts.sex != row["sex"] or parts.birth_year != row["birth_date"].year:
                raise bad_request("personal_id", "the personal ID disagrees with the child's sex or birth year")
        seq = record_change(conn, schema.changes, "birth", id, "update")
        conn.execute(births.update().where(births.c.id == id).values(**changes, change_seq=seq))
        updated = conn.execute(select(births).where(births.c.id == id)).mappings().one()
    return _doc(updated, current_call().granted(FIELDS))
