"""Handlers of openapi/business-registry.yaml, one per operationId. Each reads only the columns the grant lets out."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select

from connectors.rules import enterprise_code, legal_status
from connectors.rules.vietnamese import fold
from connectors.schema.business import changes, enterprises, owners
from connectors.sdk import current_call, current_runtime, nest, not_found, not_permitted
from connectors.sdk.changes import changes_page
from connectors.sdk.inputs import checked, parse_cursor
from connectors.sdk.values import json_value
from lienthong.problem import bad_request

E = enterprises.c
# response path -> column of `enterprises`
ENTERPRISE_COLUMNS: dict[str, Any] = {
    "code": E.code,
    "parent_code": E.parent_code,
    "name": E.name,
    "legal_status.code": E.legal_status,
    "head_office": E.head_office,
    "province_code": E.province_code,
    "legal_representative.name": E.legal_rep_name,
    "legal_representative.id": E.legal_rep_id,
    "legal_representative.nationality": E.legal_rep_nationality,
    "charter_capital": E.charter_capital,
    "registered_on": E.registered_on,
}
OWNER_COLUMNS: dict[str, Any] = {
    "owners.name": owners.c.name,
    "owners.personal_id": owners.c.personal_id,
    "owners.enterprise_code": owners.c.owner_enterprise_code,
    "owners.share": owners.c.share,
}
ENTERPRISE_PATHS = (*ENTERPRISE_COLUMNS, "legal_status.label", *OWNER_COLUMNS)
SEARCH_COLUMNS: dict[str, Any] = {
    "items.code": E.code,
    "items.name": E.name,
    "items.legal_status.code": E.legal_status,
    "items.head_office": E.head_office,
}


def getEnterprise(code: str) -> dict[str, Any]:
    code = checked(enterprise_code.validate, code, "code")
    granted = current_call().granted(ENTERPRISE_PATHS)
    need_status = "legal_status.code" in granted or "legal_status.label" in granted
    cols = [ENTERPRISE_COLUMNS[p].label(p) for p in granted if p in ENTERPRISE_COLUMNS and p != "legal_status.code"]
    with current_runtime().engine.connect() as conn:
        row = (
            conn.execute(select(E.code.label("_code"), E.legal_status.label("_status"), *cols).where(E.code == code))
            .mappings()
            .first()
        )
        if row is None:
            raise not_found("no enterprise or branch has this code")
        if not granted:
            raise not_permitted()
        doc = nest({k: json_value(v) for k, v in row.items() if not k.startswith("_")})
        if need_status:
            status = {"code": row["_status"], "label": legal_status.LEGAL_STATUSES.get(row["_status"], row["_status"])}
            doc["legal_status"] = {k: v for k, v in status.items() if f"legal_status.{k}" in granted}
        owner_paths = [p for p in granted if p in OWNER_COLUMNS]
        if owner_paths:
            ocols = [OWNER_COLUMNS[p].label(p.split(".", 1)[1]) for p in owner_paths]
            rows = conn.execute(select(*ocols).where(owners.c.enterprise_code == code).order_by(owners.c.id))
            doc["owners"] = [dict(r) for r in rows.mappings()]
    return doc


def _like_pattern(folded: str) -> str:
    escaped = folded.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def searchEnterprises(name: str, page: int = 1, page_size: int = 20) -> dict[str, Any]:
    folded = fold(name)
    if len(folded) < 2:
        raise bad_request("name", "name needs at least 2 letters or digits to search by")
    granted = current_call().granted(SEARCH_COLUMNS)
    if not granted and not current_call().granted(("page", "page_size", "total")):
        raise not_permitted("the grant allows none of the search answer's fields")
    cond = E.name_folded.like(_like_pattern(folded), escape="\\")
    with current_runtime().engine.connect() as conn:
        total = int(conn.execute(select(func.count()).select_from(enterprises).where(cond)).scalar_one())
        items: list[dict[str, Any]] = []
        if granted:
            cols = [SEARCH_COLUMNS[p].label(p.split(".", 1)[1]) for p in granted]
            rows = conn.execute(
                select(*cols)
                .where(cond)
                .order_by(E.name_folded, E.code)
                .limit(page_size)
                .offset((page - 1) * page_size)
            ).mappings()
            items = [nest(dict(r)) for r in rows]
    return {"items": items, "page": page, "page_size": page_size, "total": total}


def getChanges(since: str = "0", limit: int = 100) -> dict[str, Any]:
    return changes_page(current_runtime().engine, changes, parse_cursor(since), limit)
