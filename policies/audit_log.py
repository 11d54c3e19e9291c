"""The audit log's file format: hash-chained JSON lines in append-only segment files, one chain per worker slot.

    <dir>/audit-<slot>-<segment:06d>.jsonl     one record per line
    record["seq"]  = 1, 2, 3 ... along the slot's chain (across segments and restarts)
    record["prev"] = the previous record's hash (GENESIS for seq 1)
    record["hash"] = sha256 of the record without "hash", as orjson with sorted keys, hex

Changing a record breaks its own hash; removing or reordering records breaks prev/seq. A torn last line (power loss
mid-write) at the very end of a chain is reported apart from tampering, and the writer seals it on restart with a
`recovered` record that says how many bytes were cut.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

import orjson

GENESIS = "0" * 64
SEGMENT = re.compile(r"^audit-(\d+)-(\d{6})\.jsonl$")
TAIL_PROBE = 1 << 16


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
