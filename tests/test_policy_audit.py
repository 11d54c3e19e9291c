"""audit: records carry the operational-monitoring fields and only an HMAC of the data subject; `lienthong audit
verify` (a real process) finds a changed, removed or reordered record and tells a crash's torn tail apart."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import subprocess
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from policies.audit import Audit
from policies.cli import audit_group
from tests.procs import lienthong
from tests.test_policy_fixtures import CONSUMER, PERSON_ID, World, context

KEY = b"audit-test-key"


def write_calls(data_dir: Path, n: int, segment_bytes: int = 3000) -> Audit:
    audit = Audit("national", data_dir, KEY)
    audit.writer.segment_bytes = segment_bytes
    audit.writer.open()
    snap = World().snapshot()
    for i in range(n):
        ctx = context(snap, role="provider", path=f"/persons/{PERSON_ID}")
        ctx.client, ctx.purpose, ctx.status, ctx.user_id = CONSUMER, "birth-registration", 200, f"officer-{i}"
        ctx.response_body = b'{"id": "' + PERSON_ID.encode() + b'"}'
        audit.log(ctx)
    return audit


@dataclass
class Verified:
    returncode: int
    stdout: str


def verify(directory: Path) -> Verified:
    """The command in-process (click's runner): the same code as the CLI, without a second of start-up per call."""
    result = CliRunner().invoke(audit_group, ["verify", "--dir", str(directory)])
    return Verified(result.exit_code, result.output)


def verify_process(directory: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(lienthong("audit", "verify", "--dir", str(directory)), capture_output=True, text=True,
                          timeout=60)  # fmt: skip


def lines_of(directory: Path) -> list[tuple[Path, list[bytes]]]:
    return [(p, p.read_bytes().splitlines(keepends=True)) for p in sorted(directory.glob("audit-*.jsonl"))]


@pytest.fixture
def audit_dir(tmp_path: Path) -> Path:
    write_calls(tmp_path, 12).writer.close()
    directory = tmp_path / "audit"
    assert len(list(directory.glob("audit-*.jsonl"))) > 1  # several segments, so the chain crosses files
    return directory


def test_record_fields_and_subject_only_as_hmac(audit_dir: Path) -> None:
    text = b"".join(p.read_bytes() for p in audit_dir.glob("audit-*.jsonl"))
    assert PERSON_ID.encode() not in text.replace(b'"response_hash"', b"")  # never in clear
    rec = orjson.loads(lines_of(audit_dir)[0][1][0])
    assert rec["subject_hmac"] == hmac.new(KEY, PERSON_ID.encode(), hashlib.sha256).hexdigest()
    for name in ("transaction_id", "request_in_ts", "request_out_ts", "response_in_ts", "response_out_ts", "client",
                 "service", "method", "path_template", "purpose", "user_id", "issue", "status", "request_size",
                 "response_size", "request_hash", "response_hash", "seq", "prev", "hash"):  # fmt: skip
        assert name in rec
    assert rec["path_template"] == "/persons/{id}" and rec["client"] == CONSUMER


def test_records_are_written_as_their_sorted_key_serialization(audit_dir: Path) -> None:
    """Audit.record lists its keys in sorted order so the writer can skip orjson's sort; a field added out of order
    would make the written bytes differ from what the hash is defined over."""
    snap = World().snapshot()
    ctx = context(snap, role="provider", path=f"/persons/{PERSON_ID}")
    record = Audit("national", audit_dir.parent, KEY).record(ctx)
    assert list(record) == sorted(record)
    for _, lines in lines_of(audit_dir):
        for line in lines:
            rec = orjson.loads(line)
            body = {k: v for k, v in rec.items() if k != "hash"}
            sorted_bytes = orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
            assert line == sorted_bytes[:-1] + f',"hash":"{rec["hash"]}"}}\n'.encode()


def test_intact_chain_verifies_and_tampering_fails_the_real_command(audit_dir: Path) -> None:
    result = verify_process(audit_dir)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK: 12 records" in result.stdout
    path, lines = lines_of(audit_dir)[2]
    path.write_bytes(b"".join(lines).replace(b"officer-", b"officer_"))
    result = verify_process(audit_dir)
    assert result.returncode == 1 and f"TAMPERED {path.name}:1" in result.stdout


def test_changed_record_is_found(audit_dir: Path) -> None:
    path, lines = lines_of(audit_dir)[1]
    lines[0] = lines[0].replace(b'"status":200', b'"status":404')
    path.write_bytes(b"".join(lines))
    result = verify(audit_dir)
    assert result.returncode == 1 and "changed" in result.stdout and path.name in result.stdout


def test_removed_record_is_found(audit_dir: Path) -> None:
    path, lines = lines_of(audit_dir)[0]
    del lines[1]
    path.write_bytes(b"".join(lines))
    result = verify(audit_dir)
    assert result.returncode == 1 and "removed" in result.stdout


def test_reordered_records_are_found(audit_dir: Path) -> None:
    path, lines = lines_of(audit_dir)[0]
    lines[0], lines[1] = lines[1], lines[0]
    path.write_bytes(b"".join(lines))
    result = verify(audit_dir)
    assert result.returncode == 1 and "reordered" in result.stdout


def test_removed_segment_is_found(audit_dir: Path) -> None:
    lines_of(audit_dir)[1][0].unlink()
    result = verify(audit_dir)
    assert result.returncode == 1 and "missing" in result.stdout


def test_torn_tail_is_reported_apart_and_sealed_on_restart(tmp_path: Path) -> None:
    write_calls(tmp_path, 3, segment_bytes=1 << 20).writer.close()
    directory = tmp_path / "audit"
    path = lines_of(directory)[-1][0]
    with path.open("ab") as f:
        f.write(b'{"gateway":"national","seq":4,"tru')  # a crash mid-write
    result = verify(directory)
    assert result.returncode == 2 and "TORN" in result.stdout, result.stdout
    audit = write_calls(tmp_path, 2, segment_bytes=1 << 20)  # the restart continues the same chain
    audit.writer.close()
    result = verify(directory)
    assert result.returncode == 0, result.stdout
    records = [orjson.loads(line) for line in path.read_bytes().splitlines()]
    assert [r["seq"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert records[3]["event"] == "recovered" and records[3]["torn_bytes"] == 34


def test_policy_start_stop_flushes_and_two_workers_keep_separate_chains(tmp_path: Path) -> None:
    async def scenario() -> None:
        a, b = Audit("national", tmp_path, KEY), Audit("national", tmp_path, KEY)
        await a.start()
        await b.start()
        snap = World().snapshot()
        for policy in (a, b, a):
            ctx = context(snap)
            ctx.status = 200
            policy.log(ctx)
        await a.stop()
        await b.stop()

    asyncio.run(scenario())
    slots = {p.name.split("-")[1] for p in (tmp_path / "audit").glob("audit-*.jsonl")}
    assert slots == {"0", "1"}
    result = verify(tmp_path / "audit")
    assert result.returncode == 0 and "3 records in 2 chains" in result.stdout
