"""The delta feed every national database offers (changes since a cursor), kept in its `changes` table."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import Connection, Engine, Table, select

from connectors.sdk.call import current_call, not_permitted
from connectors.sdk.values import json_value

CHANGE_FIELDS = ("changes.seq", "changes.entity", "changes.id", "changes.op", "changes.at", "next_cursor", "has_more")


def changes_page(engine: Engine, changes: Table, since: int, limit: int) -> dict[str, Any]:
    """Up to `limit` changes with seq > since, oldest first; next_cursor is the last seq returned (or `since`)."""
    if not current_call().granted(CHANGE_FIELDS):
        raise not_permitted("the grant allows none of the change feed's fields")
    with engine.connect() as conn:
        rows = conn.execute(
            select(changes.c.seq, changes.c.entity, changes.c.entity_id, changes.c.op, changes.c.at)
            .where(changes.c.seq > since)
            .order_by(changes.c.seq)
            .limit(limit + 1)
        ).all()
    more = len(rows) > limit
    rows = rows[:limit]
    items = [{"seq": r.seq, "entity": r.entity, "id": r.entity_id, "op": r.op, "at": json_value(r.at)} for r in rows]
    return {"changes": items, "next_cursor": str(rows[-1].seq if rows else since), "has_more": more}


def record_change(conn: Connection, changes: Table, entity: str, entity_id: str, op: str) -> int:
    """Append one change in the caller's transaction and return its seq, which the changed row keeps."""
    row = {"entity": entity, "entity_id": entity_id, "op": op, "at": dt.datetime.now(dt.UTC)}
    result = conn.execute(changes.insert().values(**row))
    key = result.inserted_primary_key
    assert key is not None
    return int(key[0])
