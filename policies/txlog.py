"""txlog (priority 550, log phase): one record per call in the mesh's central transaction log (docs/operations.md).

The record carries the call's times, parties, endpoint template, status, outcome class (policies/outcome.py), sizes,
X-Road-Id, user id, purpose and the data subjects as HMACs under the mesh's subject key (as audit keeps them, never
in clear); no payload. log() appends it to this worker's spool with one write(2); the shipper
(policies/txlog_ship.py) moves it to the central store (TRANSACTION_LOG_URL: PostgreSQL, else SQLite) within a
second or so, each batch exactly once.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from pathlib import Path
from typing import Any

import orjson

from policies.audit import Audit, subject_key
from policies.base import CallContext, PolicyBase
from policies.chain import ChainConfig
from policies.outcome import classify, error_type
from policies.txlog_ship import Shipper, Spool
from policies.txlog_store import TxlogStore, default_url, open_store

log = logging.getLogger("lienthong.policies.txlog")

DEFAULT_RETENTION_DAYS = 30


class Txlog(PolicyBase):
    name = "txlog"
    priority = 550

    def __init__(self, gateway: str, data_dir: Path, store: TxlogStore, subject_key: bytes,
                 retention_days: int = DEFAULT_RETENTION_DAYS) -> None:  # fmt: skip
        self.gateway = gateway
        self.store = store
        self.spool = Spool(data_dir / "txlog")
        self.shipper = Shipper(gateway, self.spool, store, retention_days)
        self._subject_mac = hmac.new(subject_key, digestmod=hashlib.sha256)  # keyed once, copied per subject

    def record(self, ctx: CallContext) -> dict[str, Any]:
        endpoint, service, grant = ctx.endpoint, ctx.service, ctx.grant
        status, code = ctx.status, ctx.error_code
        no_data = endpoint.no_data if endpoint is not None else frozenset()
        end = ctx.response_out or time.time()
        return {
            "id": f"{self.gateway}:{ctx.transaction_id}:{ctx.role}",
            "time_in": ctx.request_in,
            "time_out": end,
            "request_out": ctx.request_out or None,
            "response_in": ctx.response_in or None,
            "duration_ms": round(max(0.0, end - ctx.request_in) * 1000, 3),
            "client": ctx.client,
            "service": service.id if service is not None else ctx.service_id,
            "endpoint": endpoint.path if endpoint is not None else None,
            "method": ctx.method,
            "status": status,
            "outcome": classify(status, code, no_data),
            "error_type": error_type(status, code),
            "request_bytes": len(ctx.body),
            "response_bytes": len(ctx.response_body),
            "xroad_id": ctx.transaction_id,
            "user_id": ctx.user_id,
            "purpose": ctx.purpose,
            "subject_hmacs": [self.subject_hmac(s) for s in Audit._subjects(ctx)],  # the subjects audit keeps
            "consumer_gateway": ctx.consumer_gateway,
            "provider_gateway": ctx.provider_gateway or (service.gateway if service is not None else None),
            "gateway": self.gateway,
            "role": ctx.role,
            # for the data tracker (issue 19): the grant, until when its accesses stay undisclosed, whether the
            # official may be named; stamped here from the grant the call was authorized under
            "grant_id": grant.id if grant is not None else None,
            "withheld_until": ctx.request_in + grant.disclosure_delay_days * 86400
            if grant is not None and grant.disclosure_delay_days
            else None,
            "user_disclosed": grant.disclose_user if grant is not None else False,
        }

    def subject_hmac(self, subject: str) -> str:
        mac = self._subject_mac.copy()
        mac.update(subject.encode("utf-8", "surrogatepass"))
        return mac.hexdigest()

    def log(self, ctx: CallContext) -> None:
        self.spool.append(orjson.dumps(self.record(ctx), option=orjson.OPT_APPEND_NEWLINE))

    async def start(self) -> None:
        self.spool.open()
        await self.shipper.start()

    async def stop(self) -> None:
        await self.shipper.stop()
        self.spool.close()
        self.store.close()


def build(cfg: ChainConfig) -> Txlog:
    key, _ = subject_key(cfg.audit_hmac_key)  # audit warns when the key is not mesh-wide
    store = open_store(cfg.transaction_log_url or default_url(cfg.data_dir))
    return Txlog(cfg.gateway, cfg.data_dir, store, key, cfg.transaction_log_retention_days)
