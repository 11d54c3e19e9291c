"""The policy chain a gateway runs for every call: the enabled policies in priority order, phase by phase.

Order (Kong-style priorities): trace 50, authn 100, authz 200, quota 300, minimize 400, meter 500, txlog 550,
audit 600.
access runs by ascending priority, except that authn runs first, on its own, before the gateway routes the call;
response and log run in reverse. A call refused in access still goes through log, so the refusal is metered and
audited (and traced once routed). How the gateway drives it:

    chain.identify(ctx)      # authn alone, before routing: no catalogue answer reaches an unauthenticated caller
    ... route the call (unknown service / endpoint answers come only now) ...
    chain.authorize(ctx)     # the other access hooks; access(ctx) runs both, for callers that route first
                             # each raises Problem to refuse; ctx.status and ctx.error_code are then already set
    ... upstream call (copy ctx.traceparent into the outbound `traceparent` header) ...
    chain.response(ctx)      # only when access passed; may rewrite ctx.response_body / ctx.response_headers
    ... send the response ...
    chain.log(ctx)           # always, refused or not; never raises
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lienthong.problem import Problem
from policies.base import CallContext, Policy

log = logging.getLogger("lienthong.policies")

# name -> (module, factory); the factory takes the ChainConfig. Imported lazily so a disabled policy costs nothing.
POLICY_MODULES: dict[str, str] = {
    "trace": "policies.trace",
    "authn": "policies.authn",
    "authz": "policies.authz",
    "quota": "policies.quota",
    "minimize": "policies.minimize",
    "meter": "policies.meter",
    "txlog": "policies.txlog",
    "audit": "policies.audit",
}
ALL_POLICIES = frozenset(POLICY_MODULES)


@dataclass
class ChainConfig:
    gateway: str  # this gateway's code
    data_dir: Path  # var/gateways/<code>: meter spool and audit segments, one set of files per worker slot
    redis_url: str
    enabled: frozenset[str]  # names of enabled policies; empty = bare pass-through
    audit_hmac_key: bytes
    trace_sample_ratio: float = 1.0
    transaction_log_url: str = ""  # the central transaction log's store; "" = SQLite in data_dir (policies/txlog.py)
    transaction_log_retention_days: int = 30


class Chain:
    """The enabled policies, sorted once; each phase is a plain loop over a tuple."""

    def __init__(self, policies: list[Policy]) -> None:
        ordered = sorted(policies, key=lambda p: p.priority)
        self.policies = tuple(ordered)
        self._identify = tuple(p for p in ordered if p.name == "authn")
        self._authorize = tuple(p for p in ordered if p.name != "authn")
        self._reverse = tuple(reversed(ordered))
        # trace starts its client span here, once access passed, so the span covers only the upstream call
        self._upstream_hooks: tuple[Callable[[CallContext], None], ...] = tuple(
            getattr(p, "upstream_start") for p in ordered if hasattr(p, "upstream_start")  # noqa: B009
        )

    def access(self, ctx: CallContext) -> None:
        """Run every access hook (authn first); on refusal record status/code on ctx (for log), re-raise the Problem."""
        self.identify(ctx)
        self.authorize(ctx)

    def identify(self, ctx: CallContext) -> None:
        """authn's access hook alone: who is calling, run before the gateway routes the call."""
        self._run(self._identify, ctx)

    def authorize(self, ctx: CallContext) -> None:
        """Every other access hook in priority order, then the upstream hooks; after identify and routing."""
        self._run(self._authorize, ctx)
        for hook in self._upstream_hooks:
            hook(ctx)

    @staticmethod
    def _run(policies: tuple[Policy, ...], ctx: CallContext) -> None:
        try:
            for policy in policies:
                policy.access(ctx)
        except Problem as problem:
            ctx.status = problem.status
            ctx.error_code = problem.code
            raise

    def response(self, ctx: CallContext) -> None:
        for policy in self._reverse:
            policy.response(ctx)

    def log(self, ctx: CallContext) -> None:
        for policy in self._reverse:
            try:
                policy.log(ctx)
            except Exception:  # a broken log hook must never fail the call or skip the others
                log.exception("policy %s failed in log phase", policy.name)

    async def start(self) -> None:
        for policy in self.policies:
            await policy.start()

    async def stop(self) -> None:
        for policy in self._reverse:
            try:
                await policy.stop()
            except Exception:
                log.exception("policy %s failed to stop", policy.name)


def build_chain(cfg: ChainConfig) -> Chain:
    """Instantiate the enabled policies; an unknown name is a configuration error, raised now."""
    unknown = set(cfg.enabled) - ALL_POLICIES
    if unknown:
        raise ValueError(f"unknown policies {sorted(unknown)}; known: {sorted(ALL_POLICIES)}")
    policies: list[Policy] = []
    for name in sorted(cfg.enabled):
        module = importlib.import_module(POLICY_MODULES[name])
        policies.append(module.build(cfg))
    return Chain(policies)
