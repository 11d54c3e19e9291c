"""audit (priority 600, log phase): one hash-chained record per call, with X-Road's operational-monitoring fields.

The data subjects (every identifier at the locations the endpoint declares: path, query, header or body, a batch's
whole array included, and those its answer discloses; lienthong/subjects.py) are kept only as
HMAC-SHA256(subject key, value), never in clear, in `subject_hmacs` (first-seen order, no repeats; `subject_hmac` is
the first, for older readers). The subject key is mesh-wide (LIENTHONG_SUBJECT_KEY, hex, the same on every gateway)
so that "who read this person" finds a call on every gateway it crossed; `subject_key_id` names the key a record
used. Records go to this worker's segment files (policies/audit_log.py) with one write(2) each, so a kill -9 after
log() returned loses nothing; fsync runs in batches every SYNC_INTERVAL in the background.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import orjson

from lienthong.background import stop_task
from lienthong.problem import Problem
from lienthong.subjects import MIN_SUBJECT_KEY_BYTES, SUBJECT_KEY_ENV, response_subjects
from policies.audit_log import ChainHead, fsync_dir, read_head, segment_path
from policies.base import CallContext, PolicyBase, read_subjects
from policies.chain import ChainConfig
from policies.worker_slot import WorkerSlot, claim_slot

log = logging.getLogger("lienthong.policies.audit")

SYNC_INTERVAL = 0.05
SEGMENT_BYTES = 64 * 1024 * 1024


def _ms(ts: float) -> int | None:
    return int(ts * 1000) if ts else None


def subject_key(own: bytes) -> tuple[bytes, bool]:
    """The key of the subject HMACs and whether it is mesh-wide: LIENTHONG_SUBJECT_KEY (hex, at least 16 bytes)
    when set, else this gateway's own audit key, whose HMACs no other gateway's records share (docs/policies.md)."""
    text = os.environ.get(SUBJECT_KEY_ENV, "").strip()
    if not text:
        return own, False
    try:
        key = bytes.fromhex(text)
    except ValueError:
        raise ValueError(f"{SUBJECT_KEY_ENV} must be hex") from None
    if len(key) < MIN_SUBJECT_KEY_BYTES:
        raise ValueError(
            f"{SUBJECT_KEY_ENV} must be at least {MIN_SUBJECT_KEY_BYTES} bytes ({2 * MIN_SUBJECT_KEY_BYTES} hex)"
        )
    return key, True


def key_id(key: bytes) -> str:
    """A public name of a subject key, so records HMAC'd with the same key can be told apart from others."""
    return hashlib.sha256(b"lienthong-subject-key-id\0" + key).hexdigest()[:16]


class AuditWriter:
    """Appends chained records to one slot's segments; also used directly by tests and tools."""

    def __init__(self, directory: Path, segment_bytes: int = SEGMENT_BYTES) -> None:
        self.dir = directory
        self.segment_bytes = segment_bytes
        self.slot: WorkerSlot | None = None
        self.head = ChainHead()
        self._fd = -1
        self._size = 0
        self._dirty = False
        self._lock = threading.Lock()

    def open(self) -> None:
        self.slot = claim_slot(self.dir)
        self.head = read_head(self.dir, self.slot.index)
        path = segment_path(self.dir, self.slot.index, self.head.segment)
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._size = os.fstat(self._fd).st_size
        if self.head.torn_bytes:
            torn = self.head.torn_bytes
            os.ftruncate(self._fd, self._size - torn)
            self._size -= torn
            log.warning("audit segment %s ended in a torn record (%d bytes); sealed with a recovery record", path, torn)
            self.append({"event": "recovered", "torn_bytes": torn, "at": _ms(time.time())})
            self.sync()

    def append(self, record: dict[str, Any], keys_sorted: bool = False) -> None:
        """Chain and write one record. `keys_sorted`: the record's keys, "seq" and "prev" among them, are already
        in sorted order, so serializing it as it stands gives the sorted-key bytes the hash is defined over."""
        with self._lock:
            record["seq"] = self.head.seq + 1
            record["prev"] = self.head.hash
            # one serialization: the hash covers exactly these sorted-key bytes, then "hash" is spliced in last
            body = orjson.dumps(record) if keys_sorted else orjson.dumps(record, option=orjson.OPT_SORT_KEYS)
            digest = hashlib.sha256(body).hexdigest()
            line = body[:-1] + b',"hash":"' + digest.encode() + b'"}\n'
            record["hash"] = digest
            if self._size and self._size + len(line) > self.segment_bytes:
                self._next_segment()
            os.write(self._fd, line)
            self._size += len(line)
            self.head.seq, self.head.hash = record["seq"], digest
            self._dirty = True

    def _next_segment(self) -> None:
        assert self.slot is not None
        os.fsync(self._fd)
        os.close(self._fd)
        self.head.segment += 1
        path = segment_path(self.dir, self.slot.index, self.head.segment)
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._size = 0
        fsync_dir(self.dir)

    def sync(self) -> None:
        # fsync a duplicate so a segment switch on the loop thread never closes the fd under us, and the lock
        # is never held across the (slow) fsync
        with self._lock:
            if not self._dirty or self._fd < 0:
                return
            self._dirty = False
            fd = os.dup(self._fd)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def close(self) -> None:
        if self._fd >= 0:
            self.sync()
            os.close(self._fd)
            self._fd = -1
        if self.slot is not None:
            self.slot.release()
            self.slot = None


class Audit(PolicyBase):
    name = "audit"
    priority = 600

    def __init__(self, gateway: str, data_dir: Path, hmac_key: bytes) -> None:
        self.gateway = gateway
        self.writer = AuditWriter(data_dir / "audit")
        self.key_id = key_id(hmac_key)
        # keyed once; each record copies the state (a third of hmac.new's cost on the hot path)
        self._subject_mac = hmac.new(hmac_key, digestmod=hashlib.sha256)
        self._task: asyncio.Task[None] | None = None

    def record(self, ctx: CallContext) -> dict[str, Any]:
        """The call's record, its keys in sorted order ("seq" and "prev" held for the writer), so that it is
        serialized without sorting: a third of orjson's cost here (tests/test_policy_audit.py checks the order)."""
        endpoint = ctx.endpoint
        status, error_code = ctx.status, ctx.error_code
        subjects = [self._subject_hmac(s) for s in self._subjects(ctx)]
        return {
            "client": ctx.client,
            "consumer_gateway": ctx.consumer_gateway,
            "error_code": error_code,
            "gateway": self.gateway,
            "grant": ctx.grant.id if ctx.grant is not None else None,
            "issue": ctx.issue,
            "items": ctx.items,
            "method": ctx.method,
            "path_template": endpoint.path if endpoint is not None else None,
            "prev": None,
            "provider_gateway": ctx.provider_gateway,
            "purpose": ctx.purpose,
            "purpose_by_default": ctx.purpose_by_default,
            "request_hash": ctx.request_hash or hashlib.sha256(ctx.body).hexdigest(),
            "request_in_ts": _ms(ctx.request_in),
            "request_out_ts": _ms(ctx.request_out),
            "request_size": len(ctx.body),
            "response_hash": hashlib.sha256(ctx.response_body).hexdigest(),
            "response_in_ts": _ms(ctx.response_in),
            "response_out_ts": _ms(ctx.response_out or time.time()),
            "response_size": len(ctx.response_body),
            "role": ctx.role,
            "seq": None,
            "service": ctx.service.id if ctx.service is not None else ctx.service_id,
            "status": status,
            "subject_hmac": subjects[0] if subjects else None,
            "subject_hmacs": subjects,
            "subject_key_id": self.key_id,
            "succeeded": 200 <= status < 400 and error_code is None,
            "transaction_id": ctx.transaction_id,
            "user_id": ctx.user_id,
        }

    @staticmethod
    def _subjects(ctx: CallContext) -> list[str]:
        """Every identifier the call carried, then those its answer disclosed (a 2xx at a declared location)."""
        try:
            carried = read_subjects(ctx)
        except Problem:  # the body the call was refused for: it reached nobody
            return []
        spec = ctx.endpoint.subjects if ctx.endpoint is not None else None
        if spec is None or not spec.response or not 200 <= ctx.status < 300:
            return carried
        return list(dict.fromkeys([*carried, *response_subjects(spec, ctx.response_body)]))

    def _subject_hmac(self, subject: str) -> str:
        mac = self._subject_mac.copy()
        mac.update(subject.encode("utf-8", "surrogatepass"))
        return mac.hexdigest()

    def access(self, ctx: CallContext) -> None:
        read_subjects(ctx)  # a declared subject location the gateway cannot read refuses the call (400), here

    def log(self, ctx: CallContext) -> None:
        self.writer.append(self.record(ctx), keys_sorted=True)

    async def start(self) -> None:
        self.writer.open()
        self._task = asyncio.create_task(self._sync_loop(), name="audit-sync")

    async def _sync_loop(self) -> None:
        while True:
            await asyncio.sleep(SYNC_INTERVAL)
            try:
                await asyncio.to_thread(self.writer.sync)
            except OSError:
                log.exception("audit fsync failed")

    async def stop(self) -> None:
        await stop_task(self._task)
        self._task = None
        self.writer.close()


def build(cfg: ChainConfig) -> Audit:
    key, mesh_wide = subject_key(cfg.audit_hmac_key)
    if not mesh_wide:
        log.warning("%s is not set: subject HMACs on gateway %s use its own key and match no other gateway's "
                    "records (docs/policies.md)", SUBJECT_KEY_ENV, cfg.gateway)  # fmt: skip
    return Audit(cfg.gateway, cfg.data_dir, key)
