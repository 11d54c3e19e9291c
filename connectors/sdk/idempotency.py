"""Writes that are safe to retry: the answer to a write is stored with its Idempotency-Key in the same transaction as
the write itself, so a retry with the same key and body gets the same answer, and the same key with another body is
409. Keys are scoped per consumer and operation, so two consumers never collide."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import Column, Connection, DateTime, Integer, LargeBinary, MetaData, String, Table, select
from sqlalchemy.exc import IntegrityError

from connectors.sdk.call import current_call, current_runtime
from lienthong.problem import Problem

IDEMPOTENCY_METADATA = MetaData()

idempotency_keys = Table(
    "connector_idempotency",
    IDEMPOTENCY_METADATA,
    Column("consumer", String(200), primary_key=True),
    Column("operation", String(100), primary_key=True),
    Column("key", String(200), primary_key=True),
    Column("request_hash", String(64), nullable=False),
    Column("status", Integer, nullable=False),
    Column("body", LargeBinary, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

Work = Callable[[Connection], tuple[int, dict[str, Any]]]


def request_hash(body: Any) -> str:
    return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()


def _stored(conn: Connection, consumer: str, operation: str, key: str, digest: str) -> tuple[int, Any] | None:
    row = conn.execute(
        select(idempotency_keys.c.request_hash, idempotency_keys.c.status, idempotency_keys.c.body).where(
            idempotency_keys.c.consumer == consumer,
            idempotency_keys.c.operation == operation,
            idempotency_keys.c.key == key,
        )
    ).first()
    if row is None:
        return None
    if row.request_hash != digest:
        raise Problem(
            409, "conflict", "this Idempotency-Key was already used with another request body", field="Idempotency-Key"
        )
    return int(row.status), orjson.loads(row.body)


class _LostRace(Exception):
    """A concurrent request with the same key committed first."""


def run_idempotent(operation: str, key: str, body: Any, work: Work) -> tuple[Any, int, dict[str, str]]:
    """Run `work` in a transaction once per (consumer, operation, key); answer (body, status, headers) for connexion.

    Only successful answers are stored: a write refused with a Problem changed nothing and may be retried as is.
    """
    consumer = current_call().consumer
    engine = current_runtime().engine
    digest = request_hash(body)
    for _attempt in range(2):
        try:
            with engine.begin() as conn:
                stored = _stored(conn, consumer, operation, key, digest)
                if stored is not None:
                    return stored[1], stored[0], {"Idempotent-Replayed": "true"}
                status, answer = work(conn)
                row = {
                    "consumer": consumer,
                    "operation": operation,
                    "key": key,
                    "request_hash": digest,
                    "status": status,
                    "body": orjson.dumps(answer, option=orjson.OPT_NON_STR_KEYS),
                    "created_at": datetime.now(UTC),
                }
                try:
                    conn.execute(idempotency_keys.insert().values(**row))
                except IntegrityError as exc:
                    raise _LostRace from exc  # leaving the block rolls our write back; the retry reads theirs
                return answer, status, {}
        except _LostRace:
            continue
    raise Problem(
        409, "conflict", "a concurrent request with this Idempotency-Key is in progress", field="Idempotency-Key"
    )
