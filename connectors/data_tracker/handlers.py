"""Handlers of openapi/data-tracker.yaml: one person's accesses, from the central transaction log.

The person's pseudonym under every key of the subject key ring (lienthong.subjects) finds the records holding it in
the log's tracker index (TxlogStore.accesses): only the provider side of each call (one record per call, made where
the data left), never the tracker's own calls, and an access under a grant with a disclosure delay only once its
date has passed.
"""

from __future__ import annotations

import functools
import os
from datetime import UTC, datetime, timedelta
from typing import Any

from connectors.rules import personal_id
from connectors.sdk.inputs import checked
from lienthong.problem import Problem, bad_request
from lienthong.subjects import pseudonym, subject_key_ring
from policies.meter_query import parse_time
from policies.txlog_store import StoreUnavailable, TxlogStore, decode_cursor, encode_cursor, micros, open_store, ts

TRANSACTION_LOG_ENV = "TRANSACTION_LOG_URL"
DEFAULT_WINDOW = timedelta(days=365)


@functools.cache
def _store() -> TxlogStore:
    url = os.environ.get(TRANSACTION_LOG_ENV, "")
    if not url:
        raise Problem(503, "storage-unavailable", f"the tracker has no transaction log ({TRANSACTION_LOG_ENV} unset)")
    return open_store(url)


@functools.cache
def _ring() -> tuple[bytes, ...]:
    ring = tuple(subject_key_ring())
    if not ring:
        raise Problem(503, "not-ready", "the tracker holds no subject key: it cannot find anyone's records")
    return ring


def listAccesses(
    person_id: str, from_: str | None = None, to: str | None = None, limit: int = 100, page_token: str | None = None
) -> dict[str, Any]:
    pid = checked(personal_id.validate, person_id, "person_id")
    end = parse_time(to, "to") if to else datetime.now(UTC)
    start = parse_time(from_, "from") if from_ else end - DEFAULT_WINDOW
    if end <= start:
        raise bad_request("to", "to must be after from")
    hmacs = tuple(pseudonym(key, pid) for key in _ring())
    after = decode_cursor(page_token) if page_token else None
    try:
        page, withheld = _store().accesses(hmacs, micros(start), micros(end), micros(datetime.now(UTC)), limit,
                                           after, _own_service())  # fmt: skip
    except StoreUnavailable as exc:
        raise Problem(503, "storage-unavailable", f"the transaction log cannot be read: {exc}",
                      headers={"Retry-After": "5"}) from None  # fmt: skip
    return {
        "accesses": [_access(row) for row in page.rows],
        "withheld_until": _iso(ts(withheld)) if withheld is not None else None,
        "next_page_token": encode_cursor(page.next) if page.next is not None and len(page.rows) == limit else None,
    }


def _access(row: dict[str, Any]) -> dict[str, Any]:
    client = str(row["client"])
    return {
        "time": _iso(ts(row["time_in"])),
        "member": client.rsplit("/", 1)[0],
        "subsystem": client,
        "service": row["service"],
        "endpoint": f"{row['method']} {row['endpoint']}",
        "purpose": row["purpose"],
        "outcome": row["outcome"],
        "official": row["user_id"],  # the store keeps it only when the grant lets it be shown
        "transaction_id": row["xroad_id"],
    }


def _own_service() -> str:
    from connectors.data_tracker import CONNECTOR

    return CONNECTOR.service_id


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
