"""authz (priority 200): deny by default. A call passes only with a live grant for this client, service, endpoint
(method + path template) and purpose, to an approved service and an enabled endpoint. Runs at every gateway the call
crosses, so the hosting gateway checks again where the data leaves (protocol §8).
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
            raise _denied("a purpose (X-Purpose) is required", field="X-Purpose")
        grant = ctx.snapshot.find_grant(ctx.client, service.id, endpoint.method, endpoint.path, ctx.purpose)
        if grant is None:
            raise _denied(
                f"no grant lets {ctx.client} call {endpoint.method} {endpoint.path} of {service.id} "
                f"for purpose {ctx.purpose}"
            )
        ctx.grant = grant


def build(cfg: ChainConfig) -> Authz:
    del cfg
    return Authz()
