"""Handlers of openapi/population.yaml, one per operationId. Each reads only the columns the grant lets out."""

from __future__ import annotations

import datetime as dt
import functools
import logging
import secrets
import unicodedata
from typing import Any

from sqlalchemy import ColumnElement, Connection, Select, and_, bindparam, or_, select

from connectors.rules import personal_id, provinces
from connectors.schema.population import changes, households, persons, residence
from connectors.sdk import current_call, current_runtime, nest, not_found, not_permitted, run_idempotent
from connectors.sdk.changes import changes_page, record_change
from connectors.sdk.inputs import checked, parse_cursor, parse_date
from connectors.sdk.values import json_value
from lienthong.problem import Problem

log = logging.getLogger("lienthong.connector.population")

# response path -> column of `persons`
PERSON_COLUMNS: dict[str, Any] = {
    "id": persons.c.id,
    "full_name": persons.c.full_name,
    "other_names": persons.c.other_names,
    "birth_date": persons.c.birth_date,
    "sex": persons.c.sex,
    "birth_place": persons.c.birth_place,
    "birth_registration_province": persons.c.birth_registration_province,
    "hometown": persons.c.hometown,
    "ethnicity": persons.c.ethnicity,
    "religion": persons.c.religion,
    "nationality": persons.c.nationality,
    "blood_type": persons.c.blood_type,
    "old_id": persons.c.old_id,
    "marital_status": persons.c.marital_status,
    "death_date": persons.c.death_date,
    "phone": persons.c.phone,
    "email": persons.c.email,
    "card.issue_date": persons.c.card_issue_date,
    "card.issue_place": persons.c.card_issue_place,
    "card.expiry": persons.c.card_expiry,
    "father.id": persons.c.father_id,
    "mother.id": persons.c.mother_id,
    "spouse.id": persons.c.spouse_id,
    "household.id": persons.c.household_id,
    "household.relation_to_head": persons.c.relation_to_head,
}
RESIDENCE_KINDS = ("permanent", "temporary", "current")
ADDRESS_FIELDS = ("address", "province_code", "valid_from", "valid_to")
RESIDENCE_PATHS = tuple(f"residence.{k}.{f}" for k in RESIDENCE_KINDS for f in ADDRESS_FIELDS)
PERSON_PATHS = (*PERSON_COLUMNS, *RESIDENCE_PATHS)
MEMBER_COLUMNS: dict[str, Any] = {
    "members.id": persons.c.id,
    "members.full_name": persons.c.full_name,
    "members.birth_date": persons.c.birth_date,
    "members.sex": persons.c.sex,
    "members.relation_to_head": persons.c.relation_to_head,
}
HOUSEHOLD_COLUMNS: dict[str, Any] = {
    "id": households.c.id,
    "head_id": households.c.head_id,
    "address": households.c.address,
    "province_code": households.c.province_code,
}


def _valid_id(value: object, field: str = "id") -> str:
    return checked(personal_id.validate, value, field)


def _agrees(pid: str, sex: str, birth_date: dt.date) -> bool:
    try:
        personal_id.check_against(pid, sex, birth_date)
    except personal_id.InvalidPersonalId:
        log.warning("a population record disagrees with its personal ID (sex or birth year); answered as no data")
        return False
    return True


def _residence_at(conn: Connection, pids: list[str], at: dt.date | None, kinds: set[str]) -> dict[str, dict[str, Any]]:
    """pid -> {kind: address row} valid on `at` (None: the open rows), the latest start winning."""
    cond: ColumnElement[bool]
    if at is None:
        cond = residence.c.valid_to.is_(None)
    else:
        cond = and_(residence.c.valid_from <= at, or_(residence.c.valid_to.is_(None), residence.c.valid_to >= at))
    rows = conn.execute(
        select(residence)
        .where(residence.c.person_id.in_(pids), residence.c.kind.in_(sorted(kinds)), cond)
        .order_by(residence.c.valid_from)
    ).all()
    out: dict[str, dict[str, Any]] = {}
    for r in rows:  # ascending valid_from: a later row overwrites an earlier one of the same kind
        out.setdefault(r.person_id, {})[r.kind] = {
            "address": r.address,
            "province_code": r.province_code,
            "valid_from": r.valid_from.isoformat(),
            "valid_to": json_value(r.valid_to),
        }
    return out


def _residence_doc(found: dict[str, Any], granted: list[str], prefix: str) -> dict[str, Any]:
    """The nested residence object cut to the granted `prefix.kind.field` paths."""
    doc: dict[str, Any] = {}
    for kind in RESIDENCE_KINDS:
        row = found.get(kind)
        keep = [f for f in ADDRESS_FIELDS if f"{prefix}{kind}.{f}" in granted]
        if keep:
            doc[kind] = None if row is None else {f: row[f] for f in keep}
    return doc


@functools.lru_cache(maxsize=512)
def _persons_statement(names: tuple[str, ...], single: bool) -> Select[Any]:
    """SELECT of the identity columns and the granted person columns `names` for the ids in :pids (one id: :pid).

    Built once per grant shape: constructing and labelling the columns cost more than running the query, and a
    single id skips the expanding IN's per-call rendering."""
    cols = [PERSON_COLUMNS[n].label(n) for n in names]
    base = [
        persons.c.id.label("_pid"),
        persons.c.restricted.label("_restricted"),
        persons.c.sex.label("_sex"),
        persons.c.birth_date.label("_birth_date"),
    ]
    query = select(*base, *cols)
    if single:
        return query.where(persons.c.id == bindparam("pid"))
    return query.where(persons.c.id.in_(bindparam("pids", expanding=True)))


def _read_persons(conn: Connection, pids: list[str], granted: list[str], prefix: str = "") -> dict[str, Any]:
    """pid -> person document (granted paths only), or the string "restricted" / "mismatch"."""
    names = tuple(p[len(prefix) :] for p in granted if p[len(prefix) :] in PERSON_COLUMNS)
    if len(pids) == 1:
        rows = conn.execute(_persons_statement(names, True), {"pid": pids[0]}).mappings().all()
    else:
        rows = conn.execute(_persons_statement(names, False), {"pids": pids}).mappings().all()
    kinds = {p[len(prefix) :].split(".")[1] for p in granted if p[len(prefix) :].startswith("residence.")}
    visible = [r["_pid"] for r in rows if not r["_restricted"]]
    places = _residence_at(conn, visible, None, kinds) if kinds and visible else {}
    out: dict[str, Any] = {}
    for r in rows:
        pid = r["_pid"]
        if not _agrees(pid, r["_sex"], r["_birth_date"]):
            out[pid] = "mismatch"
            continue
        if r["_restricted"]:
            out[pid] = "restricted"
            continue
        doc = nest({k: json_value(v) for k, v in r.items() if not k.startswith("_")})
        if kinds:
            doc["residence"] = _residence_doc(places.get(pid, {}), [p[len(prefix) :] for p in granted], "residence.")
        out[pid] = doc
    return out


def getPerson(id: str) -> dict[str, Any]:
    pid = _valid_id(id)
    call = current_call()
    granted = call.granted(PERSON_PATHS)
    with current_runtime().engine.connect() as conn:
        found = _read_persons(conn, [pid], granted).get(pid)
    if found is None or found == "mismatch":
        raise not_found("no person has this personal ID")
    if found == "restricted" or not granted:
        raise not_permitted()
    return dict(found)


def getResidence(id: str, at: str | None = None) -> dict[str, Any]:
    pid = _valid_id(id)
    day = parse_date(at, "at") if at is not None else dt.date.today()
    granted = current_call().granted(RESIDENCE_PATHS)
    with current_runtime().engine.connect() as conn:
        row = conn.execute(
            select(persons.c.restricted, persons.c.birth_date, persons.c.sex).where(persons.c.id == pid)
        ).first()
        if row is None or not _agrees(pid, row.sex, row.birth_date):
            raise not_found("no person has this personal ID")
        if row.restricted or not granted:
            raise not_permitted()
        kinds = {p.split(".")[1] for p in granted}
        found = _residence_at(conn, [pid], day, kinds).get(pid, {})
    if not found:
        raise not_found("no residence is on record for this person on that date")
    return {"id": pid, "at": day.isoformat(), "residence": _residence_doc(found, granted, "residence.")}


def _same_name(a: str, b: str) -> bool:
    def norm(s: str) -> str:
        return " ".join(unicodedata.normalize("NFC", s).casefold().split())

    return norm(a) == norm(b)


def verifyPerson(body: dict[str, Any]) -> dict[str, Any]:
    pid = _valid_id(body.get("id"))
    birth = parse_date(body.get("birth_date"), "birth_date")
    with current_runtime().engine.connect() as conn:
        row = conn.execute(
            select(persons.c.full_name, persons.c.birth_date, persons.c.sex, persons.c.restricted).where(
                persons.c.id == pid
            )
        ).first()
    if row is None:
        return {"match": False}
    if row.restricted or not current_call().allows("match"):
        raise not_permitted()
    match = row.birth_date == birth and _same_name(row.full_name, str(body.get("full_name", "")))
    return {"match": bool(match and _agrees(pid, row.sex, row.birth_date))}


def batchPersons(body: dict[str, Any]) -> dict[str, Any]:
    ids = list(body.get("ids") or [])
    call = current_call()
    granted = call.granted(f"results.person.{p}" for p in PERSON_PATHS)
    if not call.granted(("results.id", "results.status")) and not granted:
        raise not_permitted("the grant allows none of the batch answer's fields")
    valid = [i for i in dict.fromkeys(ids) if personal_id.is_valid(i)]
    with current_runtime().engine.connect() as conn:
        found = _read_persons(conn, valid, granted, "results.person.") if valid else {}
    results: list[dict[str, Any]] = []
    for i in ids:
        if not personal_id.is_valid(i):
            results.append({"id": i, "status": "invalid"})
            continue
        doc = found.get(i)
        if doc is None or doc == "mismatch":
            results.append({"id": i, "status": "not_found"})
        elif doc == "restricted" or not granted:
            results.append({"id": i, "status": "not_permitted"})
        else:
            results.append({"id": i, "status": "found", "person": doc})
    return {"results": results}


def getHouseholdMembers(id: str) -> dict[str, Any]:
    call = current_call()
    hh_paths = call.granted(HOUSEHOLD_COLUMNS)
    member_paths = call.granted(MEMBER_COLUMNS)
    with current_runtime().engine.connect() as conn:
        cols = [HOUSEHOLD_COLUMNS[p].label(p) for p in hh_paths]
        hh = conn.execute(select(households.c.id.label("_id"), *cols).where(households.c.id == id)).mappings().first()
        if hh is None:
            raise not_found("no household has this id")
        if not hh_paths and not member_paths:
            raise not_permitted()
        doc: dict[str, Any] = {k: v for k, v in hh.items() if k != "_id"}
        if member_paths:
            mcols = [MEMBER_COLUMNS[p].label(p.split(".", 1)[1]) for p in member_paths]
            rows = (
                conn.execute(
                    select(*mcols)
                    .where(persons.c.household_id == id, persons.c.restricted.is_(False))
                    .order_by(persons.c.birth_date, persons.c.id)
                )
                .mappings()
                .all()
            )
            doc["members"] = [{k: json_value(v) for k, v in r.items()} for r in rows]
    return doc


def getChanges(since: str = "0", limit: int = 100) -> dict[str, Any]:
    return changes_page(current_runtime().engine, changes, parse_cursor(since), limit)


def _new_person_id(conn: Connection, province: str, sex: str, birth_date: dt.date) -> str:
    for _ in range(50):
        pid = personal_id.make(province, sex, birth_date, secrets.randbelow(personal_id.MAX_SERIAL + 1))
        if conn.execute(select(persons.c.id).where(persons.c.id == pid)).first() is None:
            return pid
    raise Problem(409, "conflict", "no free personal ID serial was found; retry the request")


def registerBirth(body: dict[str, Any]) -> tuple[Any, int, dict[str, str]]:
    from connexion import request

    key = request.headers.get("idempotency-key", "")
    province = checked(provinces.validate, body.get("registration_province"), "registration_province")
    birth = parse_date(body.get("birth_date"), "birth_date")
    today = dt.date.today()
    if birth > today:
        raise Problem(400, "invalid-body", "birth_date is in the future", field="birth_date")
    if (today - birth).days > 366:
        raise Problem(400, "invalid-body", "a newborn is registered within a year of birth", field="birth_date")
    parents = {f: _valid_id(body[f], f) for f in ("father_id", "mother_id") if body.get(f) is not None}

    def work(conn: Connection) -> tuple[int, dict[str, Any]]:
        hh = conn.execute(
            select(households.c.address, households.c.province_code).where(households.c.id == body["household_id"])
        ).first()
        if hh is None:
            raise Problem(404, "not-found", "no household has this id", field="household_id")
        hometown = body["birth_place"]
        for field, pid in parents.items():
            parent = conn.execute(select(persons.c.hometown).where(persons.c.id == pid)).first()
            if parent is None:
                raise Problem(404, "not-found", f"{field} names no person on record", field=field)
            if field == "father_id":
                hometown = parent.hometown
        pid = _new_person_id(conn, province, body["sex"], birth)
        seq = record_change(conn, changes, "person", pid, "create")
        conn.execute(
            persons.insert().values(
                id=pid,
                full_name=body["full_name"],
                birth_date=birth,
                sex=body["sex"],
                birth_place=body["birth_place"],
                birth_registration_province=province,
                hometown=hometown,
                ethnicity=body.get("ethnicity", "Kinh"),
                religion="Không",
                nationality=body.get("nationality", "VN"),
                marital_status="single",
                father_id=parents.get("father_id"),
                mother_id=parents.get("mother_id"),
                household_id=body["household_id"],
                relation_to_head=body.get("relation_to_head", "child"),
                restricted=False,
                change_seq=seq,
            )
        )
        for kind in ("permanent", "current"):
            conn.execute(
                residence.insert().values(
                    person_id=pid, kind=kind, address=hh.address, province_code=hh.province_code, valid_from=birth
                )
            )
        record_change(conn, changes, "household", body["household_id"], "update")
        answer = {
            "id": pid,
            "full_name": body["full_name"],
            "birth_date": birth.isoformat(),
            "sex": body["sex"],
            "birth_registration_province": province,
            "household": {"id": body["household_id"], "relation_to_head": body.get("relation_to_head", "child")},
        }
        return 201, answer

    return run_idempotent("registerBirth", key, body, work)
