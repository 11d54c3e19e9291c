"""The audit log's file format: hash-chained JSON lines in append-only segment files, one chain per worker slot.

    <dir>/audit-<slot>-<segment:06d>.jsonl     one record per line
    record["seq"]  = 1, 2, 3 ... along the slot's chain (across segments and restarts)
    record["prev"] = the previous record's hash (GENESIS for seq 1)
    record["hash"] = sha256 of the record without "hash", as orjson with sorted keys, hex

Changing a record breaks its own hash; removing or reordering records breaks prev/seq. A torn last line (power loss
mid-write) at the very end of a chain is reported apart from tampering, and the writer seals it on restart with a
`recovered` record that says how many bytes were cut.

Reading by time (the operations API's pages) goes through `AuditIndex`: per segment, blocks of BLOCK_RECORDS
complete lines with their byte range and the smallest and largest `request_in_ts` in them, built once and extended
as segments grow (they are append-only; the index never writes to them, so the chain is untouched). A page reads
only the blocks that overlap its window, in time order, and stops as soon as no later block can hold a record of
the page.
"""

from __future__ import annotations

import hashlib
import heapq
import os
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

import orjson

GENESIS = "0" * 64
SEGMENT = re.compile(r"^audit-(\d+)-(\d{6})\.jsonl$")
TAIL_PROBE = 1 << 16
BLOCK_RECORDS = 256  # lines per index block: small enough that a page reads little past its window


def record_hash(record: dict[str, Any]) -> str:
    body = {k: v for k, v in record.items() if k != "hash"}
    return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()


def segment_path(directory: Path, slot: int, number: int) -> Path:
    return directory / f"audit-{slot}-{number:06d}.jsonl"


def segments(directory: Path) -> dict[int, list[tuple[int, Path]]]:
    """slot -> [(segment number, path)] in chain order."""
    found: dict[int, list[tuple[int, Path]]] = {}
    for path in directory.glob("audit-*.jsonl"):
        m = SEGMENT.match(path.name)
        if m:
            found.setdefault(int(m.group(1)), []).append((int(m.group(2)), path))
    for items in found.values():
        items.sort()
    return found


@dataclass
class ChainHead:
    """Where a slot's chain stands: the next record continues from here."""

    segment: int = 1
    seq: int = 0
    hash: str = GENESIS
    torn_bytes: int = 0  # bytes after the last complete record of the last segment


def read_head(directory: Path, slot: int) -> ChainHead:
    """The last complete record of a slot's chain, read from segment tails, and the torn bytes after it."""
    items = segments(directory).get(slot)
    if not items:
        return ChainHead()
    head = ChainHead(segment=items[-1][0])
    for position, (_, path) in enumerate(reversed(items)):
        size = path.stat().st_size
        with path.open("rb") as f:
            f.seek(max(0, size - TAIL_PROBE))
            tail = f.read()
        cut = tail.rfind(b"\n")
        if position == 0:
            head.torn_bytes = len(tail) - (cut + 1)
        if cut < 0:
            if size > TAIL_PROBE:
                raise ValueError(f"{path}: its last {TAIL_PROBE} bytes hold no record boundary")
            continue  # nothing complete in this segment; the chain stands in an earlier one
        start = tail.rfind(b"\n", 0, cut) + 1
        try:
            rec = orjson.loads(tail[start:cut])
            head.seq, head.hash = int(rec["seq"]), str(rec["hash"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path}: the last complete line is not an audit record") from exc
        return head
    return head


def iter_records(directory: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(slot, record) for every complete, parseable line; used by the operations API, not by verify."""
    for slot, items in segments(directory).items():
        for _, path in items:
            with path.open("rb") as f:
                for line in f:
                    if not line.endswith(b"\n"):
                        break
                    try:
                        yield slot, orjson.loads(line)
                    except orjson.JSONDecodeError:
                        continue


SortKey = tuple[int, str, int, int]  # (request_in_ts, transaction_id, slot, seq): the pages' order
AuditItem = tuple[int, dict[str, Any]]  # (slot, record)


def sort_key(item: AuditItem) -> SortKey:
    slot, rec = item
    return (int(rec["request_in_ts"]), str(rec.get("transaction_id") or ""), slot, int(rec.get("seq", 0)))


def _record_ts(line: bytes) -> tuple[dict[str, Any] | None, int | None]:
    try:
        rec = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None, None
    if not isinstance(rec, dict):
        return None, None
    ts = rec.get("request_in_ts")
    return rec, ts if isinstance(ts, int) and not isinstance(ts, bool) else None


@dataclass(slots=True)
class Block:
    """Complete lines [start, end) of one segment; lo/hi bound their request_in_ts (None: none has one)."""

    start: int
    end: int
    count: int = 0
    lo: int | None = None
    hi: int | None = None


@dataclass(slots=True)
class SegmentIndex:
    slot: int
    path: Path
    indexed_to: int = 0  # bytes of complete lines indexed so far
    blocks: list[Block] = field(default_factory=list)

    def extend(self) -> None:
        """Index the complete lines appended since the last call (a segment only grows; if it shrank, start over)."""
        size = self.path.stat().st_size
        if size < self.indexed_to:
            self.indexed_to, self.blocks = 0, []
        if size == self.indexed_to:
            return
        with self.path.open("rb") as f:
            f.seek(self.indexed_to)
            data = f.read(size - self.indexed_to)
        complete = data.rfind(b"\n") + 1  # a line still being written (or torn) waits for the next call
        offset = self.indexed_to
        block = self.blocks[-1] if self.blocks and self.blocks[-1].count < BLOCK_RECORDS else None
        for line in data[:complete].splitlines(keepends=True):
            if block is None or block.count >= BLOCK_RECORDS:
                block = Block(offset, offset)
                self.blocks.append(block)
            _, ts = _record_ts(line)
            if ts is not None:
                block.lo = ts if block.lo is None else min(block.lo, ts)
                block.hi = ts if block.hi is None else max(block.hi, ts)
            offset += len(line)
            block.end, block.count = offset, block.count + 1
        self.indexed_to = offset

    def read(self, block: Block) -> Iterator[dict[str, Any]]:
        with self.path.open("rb") as f:
            f.seek(block.start)
            data = f.read(block.end - block.start)
        for line in data.splitlines():
            rec, ts = _record_ts(line)
            if rec is not None and ts is not None:
                yield rec


@dataclass
class PageStats:
    """What the last page read: for tests and for the curious."""

    segments: set[Path] = field(default_factory=set)
    blocks: int = 0
    records: int = 0


class AuditIndex:
    """Time-window pages of one audit directory, from per-segment block indexes; thread-safe (one lock)."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self._segments: dict[Path, SegmentIndex] = {}
        self._lock = threading.Lock()
        self.last = PageStats()

    def refresh(self) -> list[SegmentIndex]:
        """Every segment present, each indexed to its end (only the new bytes are read)."""
        found: list[SegmentIndex] = []
        if not self.dir.is_dir():
            return found
        for slot, items in segments(self.dir).items():
            for _, path in items:
                seg = self._segments.get(path)
                if seg is None:
                    seg = self._segments[path] = SegmentIndex(slot, path)
                try:
                    seg.extend()
                except FileNotFoundError:  # removed (archived) since the listing
                    del self._segments[path]
                    continue
                found.append(seg)
        for gone in set(self._segments) - {s.path for s in found}:
            del self._segments[gone]
        return found

    def page(
        self, lo: int, hi: int, after: SortKey | None, limit: int,
        keep: Callable[[dict[str, Any]], bool] | None = None,
    ) -> list[AuditItem]:  # fmt: skip
        """The `limit` smallest records by sort_key with lo <= request_in_ts < hi, past `after`, that `keep` lets
        through: exactly what a full scan of every segment would give, reading only the blocks that can hold them."""
        with self._lock:
            stats = PageStats()
            floor = max(lo, after[0]) if after is not None else lo
            candidates = [
                (block.lo, index, seg, block)
                for index, seg in enumerate(self.refresh())
                for block in seg.blocks
                if block.lo is not None and block.hi is not None and block.hi >= floor and block.lo < hi
            ]
            candidates.sort(key=lambda c: (c[0], c[1], c[3].start))
            heap: list[tuple[_Reversed, int, AuditItem]] = []  # the best `limit` so far, the worst on top
            for block_lo, _, seg, block in candidates:
                if len(heap) == limit and block_lo > heap[0][0].key[0]:
                    break  # this block and every later one start after the worst record kept
                stats.segments.add(seg.path)
                stats.blocks += 1
                for rec in seg.read(block):
                    stats.records += 1
                    if not lo <= rec["request_in_ts"] < hi:
                        continue
                    item = (seg.slot, rec)
                    key = sort_key(item)
                    if (after is not None and key <= after) or (keep is not None and not keep(rec)):
                        continue
                    # the record count breaks ties, so two equal keys (a copied line) never compare records
                    if len(heap) < limit:
                        heapq.heappush(heap, (_Reversed(key), stats.records, item))
                    elif key < heap[0][0].key:
                        heapq.heapreplace(heap, (_Reversed(key), stats.records, item))
            self.last = stats
            return [item for _, _, item in sorted(heap, key=lambda e: (e[0].key, e[1]))]


@dataclass(frozen=True, slots=True)
class _Reversed:
    """A sort key ordered backwards, so heapq's min-heap keeps the largest key on top."""

    key: SortKey

    def __lt__(self, other: _Reversed) -> bool:
        return self.key > other.key


@dataclass
class VerifyReport:
    records: int = 0
    chains: int = 0
    problems: list[str] = field(default_factory=list)  # tampering: changed, removed, reordered, unreadable
    torn: list[str] = field(default_factory=list)  # a crash cut the last write of a chain

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_dir(directory: Path) -> VerifyReport:
    """Walk every slot's chain and name each place where it does not hold."""
    report = VerifyReport()
    for slot, items in sorted(segments(directory).items()):
        report.chains += 1
        expect_seq, expect_prev = 1, GENESIS
        numbers = [n for n, _ in items]
        if numbers[0] != 1:
            report.problems.append(f"slot {slot}: chain starts at segment {numbers[0]}, earlier segments removed")
        for a, b in pairwise(numbers):
            if b != a + 1:
                report.problems.append(f"slot {slot}: segments {a + 1}..{b - 1} missing")
        for index, (_, path) in enumerate(items):
            last_segment = index == len(items) - 1
            data = path.read_bytes()
            lines = data.split(b"\n")
            tail = lines.pop()  # bytes after the last newline ("" when the file ends cleanly)
            for lineno, line in enumerate(lines, 1):
                where = f"{path.name}:{lineno}"
                try:
                    rec = orjson.loads(line)
                    seq, prev, stored = int(rec["seq"]), str(rec["prev"]), str(rec["hash"])
                except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                    report.problems.append(f"{where}: not a readable audit record")
                    continue
                report.records += 1
                if record_hash(rec) != stored:
                    report.problems.append(f"{where}: record seq {seq} was changed (hash mismatch)")
                if seq != expect_seq:
                    kind = "removed" if seq > expect_seq else "reordered or duplicated"
                    report.problems.append(f"{where}: expected seq {expect_seq}, found {seq} (records {kind})")
                if prev != expect_prev:
                    report.problems.append(f"{where}: record seq {seq} does not follow the previous record (prev)")
                expect_seq, expect_prev = seq + 1, stored
            if tail:
                if last_segment:
                    report.torn.append(f"{path.name}: {len(tail)} bytes of an unfinished last record (crash)")
                else:
                    report.problems.append(f"{path.name}: unterminated data inside the chain")
    return report


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
