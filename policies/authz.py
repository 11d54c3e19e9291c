"""authz (priority 200): deny by default. A call passes only with a live grant for this client, service, endpoint
(method + path template) and purpose, to an approved service and an enabled endpoint. Runs at every gateway the call
crosses, so the hosting gateway checks again where the data leaves (protocol §8).

A call without X-Purpose (X-Road clients send none) takes the purpose its grants imply: a grant's default purpose, or
its only purpose. It is refused when no covering grant implies one (several purposes, no default) or when two
covering grants imply different ones; an applied purpose is marked so that the audit records it as by default.
"""

from __future__ import annotations

from lienthong.problem import Problem
from policies.base import CallContext, PolicyBase
from policies.chain import ChainConfig


def _denied(detail: str, field: str | None = None) -> Problem:
    return Problem(403, "access-denied", detail, field=field)


class Authz(PolicyBase):
    name = "authz"
    priority = 200

    def access(self, ctx: CallContext) -> None:
        service, endpoint = ctx.service, ctx.endpoint
        if service is None or endpoint is None or ctx.client is None:
            raise _denied("no service, endpoint or authenticated client for this call")
        if ctx.provider_gateway is None:
            ctx.provider_gateway = service.gateway
        if not service.approved:
            raise _denied(f"service {service.id} is not approved")
        if not endpoint.enabled:
            raise _denied(f"endpoint {endpoint.method} {endpoint.path} is disabled")
        if not ctx.purpose:
            ctx.purpose = self._default_purpose(ctx, service.id, endpoint.method, endpoint.path)
            ctx.purpose_by_default = True
        grant = ctx.snapshot.find_grant(ctx.client, service.id, endpoint.method, endpoint.path, ctx.purpose)
        if grant is None:
            raise _denied(
                f"no grant lets {ctx.client} call {endpoint.method} {endpoint.path} of {service.id} "
                f"for purpose {ctx.purpose}"
            )
        ctx.grant = grant

    @staticmethod
    def _default_purpose(ctx: CallContext, service: str, method: str, template: str) -> str:
        """The one purpose the client's grants for this endpoint imply, or a 403 saying what to do instead."""
        assert ctx.client is not None
        covering = [g for g in ctx.snapshot.grants.get((ctx.client, service), ()) if g.covers(method, template)]
        if not covering:
            raise _denied(f"no grant lets {ctx.client} call {method} {template} of {service}")
        implied = {g.implied_purpose for g in covering if g.implied_purpose is not None}
        if len(implied) == 1:
            return implied.pop()
        ids = ", ".join(sorted(g.id for g in covering))
        why = f"grants {ids} imply different purposes" if implied else f"grant {ids}: several purposes and no default"
        raise _denied(f"{why}: send X-Purpose, or set a default_purpose on the grant", field="X-Purpose")


def build(cfg: ChainConfig) -> Authz:
    del cfg
    return Authz()
