"""The data tracker's index in the transaction log (issue 19: "who read my data"), on both stores (a real PostgreSQL
schema and a real SQLite file): filled at ingest from the provider side only, one row per record and subject, the
official only when the grant allows; accesses() checked against the same question asked in plain Python over the
records (withholding, the tracker's own service, time windows, paging, several HMACs after a key rotation); exactly
once on a replayed batch; retention by whole months."""

from __future__ import annotations

import random
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from policies.txlog_postgres import PostgresStore
from policies.txlog_store import ACCESS_FIELDS, TRACKED_ROLES, BatchId, Cursor, Filters, TxlogStore, open_store, us
from tests.test_txlog import DAY, HMACS, SERVICES, T0, lines, pg_url, record  # noqa: F401  # pg_url: a fixture

TRACKER = "VN/GOV/BCA/data-tracker/accesses"
WIDE = (0, us(T0 + 400 * DAY))  # a window holding every record


class Tracked:
    """A store and a count of its tracker index's rows, read by SQL of the test's own."""

    def __init__(self, store: TxlogStore, count: Any) -> None:
        self.store = store
        self.count_subjects = count


@pytest.fixture(params=["postgresql", "sqlite"])
def tracked(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Tracked]:
    if request.param == "postgresql":
        url = request.getfixturevalue("pg_url")
        store = open_store(url)

        def count() -> int:
            with psycopg.connect(url) as conn:
                row = conn.execute("SELECT count(*) FROM txlog_subjects").fetchone()
            return int(row[0]) if row else 0
    else:
        path = tmp_path / "t.sqlite3"
        store = open_store(f"sqlite:///{path}")

        def count() -> int:
            with sqlite3.connect(path) as conn:
                return int(conn.execute("SELECT count(*) FROM txlog_subjects").fetchone()[0])

    yield Tracked(store, count)
    store.close()


def tracked_records(n: int, seed: int = 19, spread: float = 3600.0) -> list[dict[str, Any]]:
    """Records as the txlog policy spools them since issue 19: some under a grant with a disclosure delay, some whose
    grant names the official; some calls of the tracker itself; a batch call's several subjects."""
    rng = random.Random(seed)
    times = [T0 + rng.uniform(0, spread) for _ in range(n)]
    times[1::9] = [times[0]] * len(times[1::9])  # ties: paging breaks them by id
    recs = []
    for i, t in enumerate(times):
        rec = record(i, t, rng)
        rec["subject_hmacs"] = rng.sample(HMACS, rng.choice([0, 1, 1, 2, 4]))  # 4: a batch call
        if i % 13 == 0:
            rec["subject_hmacs"] *= 2  # a batch naming one person twice: still one access
        if i % 11 == 0:
            rec["service"] = TRACKER
        delay = rng.choice([None, None, None, 1800.0, 2 * DAY])
        rec["grant_id"] = f"grant-{i % 5}"
        rec["withheld_until"] = t + delay if delay else None
        rec["user_disclosed"] = rng.random() < 0.3
        rec["user_id"] = f"officer-{i % 4}"
        recs.append(rec)
    return recs


def ingest(store: TxlogStore, recs: list[dict[str, Any]], spool: str = "gw/spool-0-t", size: int = 97) -> None:
    for k in range(0, len(recs), size):
        assert store.ingest(BatchId(spool, k, k + size), lines(recs[k : k + size]))


def reference(recs: list[dict[str, Any]], hmacs: tuple[str, ...], window: tuple[int, int], now: int,
              exclude: str | None = None) -> tuple[list[dict[str, Any]], int | None]:  # fmt: skip
    """accesses() written out again over the records: the expected rows (newest first) and latest withheld date."""
    kept = [r for r in recs if r["role"] in TRACKED_ROLES and set(hmacs) & set(r["subject_hmacs"])
            and window[0] <= us(r["time_in"]) < window[1] and (exclude is None or r["service"] != exclude)]  # fmt: skip
    shown = [r for r in kept if r["withheld_until"] is None or us(r["withheld_until"]) <= now]
    held = [us(r["withheld_until"]) for r in kept if r["withheld_until"] is not None and us(r["withheld_until"]) > now]
    rows = []
    for r in sorted(shown, key=lambda r: (us(r["time_in"]), r["id"]), reverse=True):
        row = {name: r[name] for name in ACCESS_FIELDS}
        row["time_in"] = us(r["time_in"])
        row["user_id"] = r["user_id"] if r["user_disclosed"] else None
        rows.append(row)
    return rows, max(held) if held else None


def every_page(store: TxlogStore, hmacs: tuple[str, ...], window: tuple[int, int], now: int, limit: int,
               exclude: str | None = None) -> tuple[list[dict[str, Any]], int | None]:  # fmt: skip
    rows: list[dict[str, Any]] = []
    after: Cursor | None = None
    withheld = []
    while True:
        page, held = store.accesses(hmacs, window[0], window[1], now, limit, after, exclude)
        assert len(page.rows) <= limit
        rows += page.rows
        withheld.append(held)
        if page.next is None:
            break
        after = page.next
    assert len(set(withheld)) == 1, "every page reports the same withheld date"
    return rows, withheld[0]


NOWS = [T0 - 60, T0 + 1800, T0 + 3600, T0 + 3 * DAY]  # before all, amid the delays, after the short ones, after all


@pytest.mark.parametrize("hmac", range(len(HMACS)))
def test_each_person_finds_exactly_the_provider_side_records_holding_them(tracked: Tracked, hmac: int) -> None:
    recs = tracked_records(400)
    ingest(tracked.store, recs)
    hmacs = (HMACS[hmac],)
    for now in map(us, NOWS):
        want, held = reference(recs, hmacs, WIDE, now)
        page, withheld = tracked.store.accesses(hmacs, *WIDE, now, 1000, None, None)
        assert page.rows == want and withheld == held and page.next is None
    # the data: the case covers what it claims
    assert any(r["role"] == "home" and HMACS[hmac] in r["subject_hmacs"] for r in recs)
    assert any(len(r["subject_hmacs"]) == 4 and HMACS[hmac] in r["subject_hmacs"] and r["role"] in TRACKED_ROLES
               for r in recs)  # fmt: skip


def test_withheld_accesses_stay_hidden_until_their_date(tracked: Tracked) -> None:
    t = T0 + 100
    base = {**tracked_records(1)[0], "role": "provider", "subject_hmacs": [HMACS[0]], "service": SERVICES[0]}
    open_, short, long_ = ({**base, "id": f"gw:{k}:provider", "withheld_until": until}
                           for k, until in (("open", None), ("short", t + 3600), ("long", t + 30 * DAY)))  # fmt: skip
    ingest(tracked.store, [open_, short, long_])
    hmacs = (HMACS[0],)

    def ids_at(now: float) -> tuple[list[str], int | None]:
        page, held = tracked.store.accesses(hmacs, *WIDE, us(now), 100, None, None)
        return sorted(r["id"] for r in page.rows), held

    assert ids_at(t + 60) == (["gw:open:provider"], us(t + 30 * DAY))
    assert ids_at(t + 3600) == (["gw:open:provider", "gw:short:provider"], us(t + 30 * DAY))  # its date: shown
    assert ids_at(t + 30 * DAY) == (["gw:long:provider", "gw:open:provider", "gw:short:provider"], None)
    # a withheld access outside the window says nothing about the window
    page, held = tracked.store.accesses(hmacs, 0, us(t), us(t + 60), 100, None, None)
    assert page.rows == [] and held is None


def test_the_trackers_own_calls_are_left_out(tracked: Tracked) -> None:
    recs = tracked_records(400)
    ingest(tracked.store, recs)
    now = us(T0 + 3 * DAY)
    for hmac in HMACS:
        want, held = reference(recs, (hmac,), WIDE, now, TRACKER)
        page, withheld = tracked.store.accesses((hmac,), *WIDE, now, 1000, None, TRACKER)
        assert page.rows == want and withheld == held
        assert all(r["service"] != TRACKER for r in page.rows)
    assert any(r["service"] == TRACKER and r["role"] in TRACKED_ROLES and r["subject_hmacs"] for r in recs)


@pytest.mark.parametrize("limit", [1, 4, 50])
def test_two_keys_page_newest_first_each_record_once(tracked: Tracked, limit: int) -> None:
    """After a key rotation the tracker asks with the current and the retired pseudonym; a record holding both
    (here: a call that carried two subjects) is one access, and keyset paging neither skips nor repeats."""
    recs = tracked_records(300)
    ingest(tracked.store, recs)
    hmacs = (HMACS[1], HMACS[2])
    assert any({HMACS[1], HMACS[2]} <= set(r["subject_hmacs"]) and r["role"] in TRACKED_ROLES for r in recs)
    window = (us(T0 + 300), us(T0 + 3300))
    for now in map(us, NOWS[1:3]):
        want, held = reference(recs, hmacs, window, now, TRACKER)
        got, withheld = every_page(tracked.store, hmacs, window, now, limit, TRACKER)
        assert got == want and withheld == held
        assert len({r["id"] for r in got}) == len(got)


def test_a_replayed_batch_adds_no_index_rows(tracked: Tracked) -> None:
    recs = tracked_records(200)
    rows = sum(len(set(r["subject_hmacs"])) for r in recs if r["role"] in TRACKED_ROLES)
    assert tracked.store.ingest(BatchId("nghean/spool-1-r", 0, 500), lines(recs[:120]))
    assert not tracked.store.ingest(BatchId("nghean/spool-1-r", 0, 500), lines(recs[:120]))  # the shipper retries
    assert not tracked.store.ingest(BatchId("nghean/spool-1-r", 400, 900), lines(recs[100:]))  # overlapping
    assert tracked.store.ingest(BatchId("nghean/spool-1-r", 500, 900), lines(recs[120:]))
    assert tracked.count_subjects() == rows
    now = us(T0 + 3 * DAY)
    assert tracked.store.accesses((HMACS[3],), *WIDE, now, 1000, None, None)[0].rows == (
        reference(recs, (HMACS[3],), WIDE, now)[0])  # fmt: skip


def test_a_record_spooled_before_the_tracker_is_indexed_without_its_official(tracked: Tracked) -> None:
    old = {**tracked_records(1)[0], "role": "local", "subject_hmacs": [HMACS[4]]}
    for name in ("grant_id", "withheld_until", "user_disclosed"):
        del old[name]
    ingest(tracked.store, [old])
    (row,) = tracked.store.accesses((HMACS[4],), *WIDE, us(T0), 10, None, None)[0].rows
    assert row["id"] == old["id"] and row["user_id"] is None and old["user_id"]


def test_no_hmac_finds_nothing(tracked: Tracked) -> None:
    ingest(tracked.store, tracked_records(50))
    assert tracked.store.accesses((), *WIDE, us(T0), 10, None, None)[0].rows == []


def months_of(recs: list[dict[str, Any]]) -> list[str]:
    import time

    return sorted({time.strftime("%Y%m", time.gmtime(r["time_in"])) for r in recs})


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_retention_drops_the_index_by_whole_months(request: pytest.FixtureRequest, tmp_path: Path,
                                                   backend: str) -> None:  # fmt: skip
    recs = tracked_records(600, spread=60 * DAY)  # three months from T0
    for r in recs:
        r["withheld_until"] = None
    url = request.getfixturevalue("pg_url") if backend == "postgresql" else f"sqlite:///{tmp_path}/r.sqlite3"
    store = open_store(url)
    try:
        ingest(store, recs)
        months = months_of(recs)
        assert len(months) == 3
        if isinstance(store, PostgresStore):
            assert store.partitions("txlog_subjects") == [f"txlog_s{m}" for m in months]
        # a cutoff in the third month: the first two months ended before it, the third has not
        third = min(r["time_in"] for r in recs if months_of([r]) == months[2:])
        cutoff = (int(third // DAY) + 2) * 86_400_000_000
        store.drop_before(cutoff)
        if isinstance(store, PostgresStore):
            assert store.partitions("txlog_subjects") == [f"txlog_s{months[2]}"]
        kept = [r for r in recs if months_of([r]) == months[2:]]
        now = us(T0 + 100 * DAY)
        for hmac in HMACS:
            assert store.accesses((hmac,), *WIDE, now, 1000, None, None)[0].rows == (
                reference(kept, (hmac,), WIDE, now)[0])  # fmt: skip
        assert any(us(r["time_in"]) < cutoff for r in kept)  # the month's start before the cutoff stays
    finally:
        store.close()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_the_index_may_outlive_the_log(request: pytest.FixtureRequest, tmp_path: Path, backend: str) -> None:
    """The shipper keeps the tracker's index longer than the log (a person asks about a year back): dropping the
    log's days leaves the index of months not yet past its own cutoff."""
    recs = tracked_records(200, spread=20 * DAY)
    for r in recs:
        r["withheld_until"] = None
    url = request.getfixturevalue("pg_url") if backend == "postgresql" else f"sqlite:///{tmp_path}/k.sqlite3"
    store = open_store(url)
    try:
        ingest(store, recs)
        after_all = (int(max(r["time_in"] for r in recs) // DAY) + 1) * 86_400_000_000
        store.drop_before(after_all, index_day_us=us(T0 - 40 * DAY))
        assert store.query(Filters(), *WIDE, 1000).rows == []  # the log's days are gone
        now = us(T0 + 100 * DAY)
        for hmac in HMACS:  # the index is whole
            assert store.accesses((hmac,), *WIDE, now, 1000, None, None)[0].rows == (
                reference(recs, (hmac,), WIDE, now)[0])  # fmt: skip
    finally:
        store.close()
