"""The audit log's time index (policies/audit_log.AuditIndex, issue 13): a page from the index is exactly what a
full scan of every segment gives, for any window, limit, paging position and member filter (hypothesis, against an
oracle that sorts every record iter_records reads); a page reads only the segments and blocks its window needs; the
index follows segments as they grow and new ones appear; the hash chain still verifies."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policies.audit import AuditWriter
from policies.audit_log import BLOCK_RECORDS, AuditIndex, iter_records, sort_key, verify_dir

T0 = 1_780_000_000_000  # ms
CLIENTS = ("VN/PROV/NGHEAN/civil-status", "VN/PROV/HANOI/portal", "VN/GOV/BTP/justice")


def write(directory: Path, n: int, *, seed: int, segment_bytes: int = 16_384, start: int = T0,
          step: int = 1000, jitter: int = 5000, slots: int = 1) -> None:  # fmt: skip
    """n records in time order of writing, spread over `slots` workers' chains; request_in_ts runs up to `jitter` ms
    behind (a long call is written after shorter ones that began later), some share a millisecond (and a
    transaction id), a few have no time at all."""
    rng = random.Random(seed)
    writers = [AuditWriter(directory, segment_bytes=segment_bytes) for _ in range(slots)]
    for writer in writers:
        writer.open()
    try:
        for i in range(n):
            record: dict[str, Any] = {
                "transaction_id": f"tx-{seed}-{rng.randrange(300):03d}",
                "client": rng.choice(CLIENTS),
                "service": "VN/GOV/BCA/population/persons",
            }
            if i % 97 != 5:
                record["request_in_ts"] = start + i * step - rng.randrange(jitter + 1)
            rng.choice(writers).append(record)
    finally:
        for writer in writers:
            writer.close()


def oracle(directory: Path, lo: int, hi: int, after: tuple[int, str, int, int] | None, limit: int,
           keep: Any = None) -> list[tuple[int, dict[str, Any]]]:  # fmt: skip
    """The page by brute force: every record of every segment, filtered and sorted."""
    found = [item for item in iter_records(directory)
             if isinstance(item[1].get("request_in_ts"), int) and lo <= item[1]["request_in_ts"] < hi
             and (after is None or sort_key(item) > after) and (keep is None or keep(item[1]))]  # fmt: skip
    return sorted(found, key=sort_key)[:limit]


@pytest.fixture(scope="module")
def log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("audit")
    write(directory, 1500, seed=1, slots=3)  # three workers' chains, many segments each
    write(directory, 400, seed=2, step=3500, jitter=60_000)  # a restart: slot 0's chain goes on, far less ordered
    return directory


def test_the_log_has_many_segments_in_two_chains_that_verify(log: Path) -> None:
    assert len(list(log.glob("audit-0-*.jsonl"))) > 5 and list(log.glob("audit-2-*.jsonl"))
    report = verify_dir(log)
    assert report.ok and report.chains == 3 and report.records == 1900


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    lo=st.integers(T0 - 70_000, T0 + 1_600_000),
    span=st.integers(1, 1_700_000),
    limit=st.integers(1, 400),
    skip=st.integers(0, 3),
    member=st.sampled_from([None, *CLIENTS]),
)
def test_a_page_from_the_index_is_the_page_of_a_full_scan(
    log: Path, lo: int, span: int, limit: int, skip: int, member: str | None
) -> None:
    keep = None if member is None else (lambda rec: rec.get("client") == member)
    index = AuditIndex(log)
    after = None
    for _ in range(skip + 1):  # page on, from the last key of the previous page, as next_page_token does
        page = index.page(lo, lo + span, after, limit, keep)
        assert page == oracle(log, lo, lo + span, after, limit, keep)
        if len(page) < limit:
            break
        after = sort_key(page[-1])


def test_paging_through_a_window_gives_every_record_once_in_order(log: Path) -> None:
    index = AuditIndex(log)
    lo, hi = T0 + 100_000, T0 + 900_000
    seen, after = [], None
    while True:
        page = index.page(lo, hi, after, 37)
        seen += page
        if len(page) < 37:
            break
        after = sort_key(page[-1])
    assert seen == oracle(log, lo, hi, None, 10**6)


def test_a_page_reads_only_the_segments_and_blocks_its_window_needs(tmp_path: Path) -> None:
    write(tmp_path, 3000, seed=7, jitter=0)  # one chain, its segments one after another in time
    index = AuditIndex(tmp_path)
    segs = index.refresh()
    assert len(segs) > 10 and sum(len(seg.blocks) for seg in segs) >= 3000 // BLOCK_RECORDS
    window = (T0 + 2_000_000, T0 + 2_010_000)  # ten seconds in the middle of the log
    page = index.page(*window, None, 100)
    assert page == oracle(tmp_path, *window, None, 100) and len(page) == 10
    assert len(index.last.segments) == 1 and index.last.blocks <= 2 and index.last.records <= 2 * BLOCK_RECORDS
    # the 20 oldest records of the whole log: the first block holds them, and the page stops there
    page = index.page(T0 - 1, T0 + 10**9, None, 20)
    assert page == oracle(tmp_path, T0 - 1, T0 + 10**9, None, 20)
    assert index.last.segments == {tmp_path / "audit-0-000001.jsonl"} and index.last.blocks == 1
    # the next page goes on from there, and a page past the end reads nothing
    last = sort_key(page[-1])
    assert index.page(T0 - 1, T0 + 10**9, last, 20) == oracle(tmp_path, T0 - 1, T0 + 10**9, last, 20)
    assert index.last.blocks == 1
    assert index.page(T0 + 10**8, T0 + 10**9, None, 20) == [] and index.last.blocks == 0


def test_the_index_follows_a_growing_segment_and_a_new_one(tmp_path: Path) -> None:
    write(tmp_path, 50, seed=3)
    index = AuditIndex(tmp_path)
    assert len(index.page(T0 - 10**6, T0 + 10**9, None, 1000)) == 49  # one record has no time
    write(tmp_path, 700, seed=4, start=T0 + 10**6)  # the same slot's chain goes on and rotates
    wide = (T0 - 10**6, T0 + 10**9)
    assert index.page(*wide, None, 10_000) == oracle(tmp_path, *wide, None, 10_000)
    assert len(index.page(*wide, None, 10_000)) == 49 + sum(1 for i in range(700) if i % 97 != 5)
    assert verify_dir(tmp_path).ok  # reading never touched the chain


def test_a_line_still_being_written_waits_for_the_next_page(tmp_path: Path) -> None:
    write(tmp_path, 10, seed=5, jitter=0)
    segment = next(tmp_path.glob("audit-0-*.jsonl"))
    index = AuditIndex(tmp_path)
    wide = (T0 - 10**6, T0 + 10**9)
    assert len(index.page(*wide, None, 100)) == 9  # the sixth record has no time
    with segment.open("ab") as f:
        f.write(b'{"request_in_ts": %d, "transaction_id": "half' % (T0 + 50_000))
    assert len(index.page(*wide, None, 100)) == 9
    with segment.open("ab") as f:
        f.write(b'", "seq": 11}\n')
    assert [r["transaction_id"] for _, r in index.page(*wide, None, 100)][-1] == "half"


def test_an_index_page_of_a_large_log_is_fast(tmp_path: Path) -> None:
    """Not a timing test: a count of what was read. A narrow recent window reads one block, not the log."""
    write(tmp_path, 20_000, seed=6, segment_bytes=1 << 20, jitter=2000)
    index = AuditIndex(tmp_path)
    index.refresh()
    page = index.page(T0 + 19_000_000, T0 + 19_010_000, None, 1000)
    assert page == oracle(tmp_path, T0 + 19_000_000, T0 + 19_010_000, None, 1000)
    assert index.last.blocks <= 2 and len(index.last.segments) == 1
