"""The contract every policy keeps, after Kong's plugin model: a name, a priority and three phase hooks.

- access(ctx): before the upstream call; raise lienthong.problem.Problem to refuse the call.
- response(ctx): after the upstream answered (or the mesh failed); may rewrite ctx.response_body.
- log(ctx): once the response is final, just before it is sent, so that a kill -9 can never leave a call the
  client saw unmetered or unaudited; must never raise and never block (append to a spool, do not send).

Hooks are synchronous on purpose: nothing on the hot path waits on the network. Work that needs I/O (quota
reconciliation, metering flushes, exports) runs in the policy's own background task started by start().
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from lienthong.pki import Peer
from lienthong.snapshot import Endpoint, Grant, Service, Snapshot
from lienthong.subjects import extract

Role = Literal["home", "provider", "local"]  # local: home and hosting gateway are the same


@dataclass(slots=True)
class CallContext:
    """Everything one call carries through the chain; policies read and fill it, the router owns it."""

    gateway: str
    transaction_id: str
    method: str
    path: str  # the provider path after the service code, e.g. /persons/001203004567
    query: bytes
    headers: dict[str, str]  # lower-case names
    body: bytes
    snapshot: Snapshot
    role: Role = "local"
    service_id: str | None = None
    service: Service | None = None
    endpoint: Endpoint | None = None
    path_params: dict[str, str] = field(default_factory=dict)
    client: str | None = None  # consumer subsystem id, from the client token or the gateway assertion
    purpose: str | None = None
    purpose_by_default: bool = False  # no X-Purpose came; authz applied the grant's default purpose
    user_id: str | None = None
    issue: str | None = None
    grant: Grant | None = None
    assertion: dict[str, Any] | None = None  # verified inbound gateway assertion (provider role)
    consumer_gateway: str | None = None
    provider_gateway: str | None = None
    request_hash: str = ""
    traceparent: str | None = None
    subjects: list[str] | None = None  # the data subjects' identifiers, once read_subjects() ran; never logged
    items: int = 1  # the batch's item count (quota and meter count items), 1 for any other call
    peer: Peer | None = None  # the TLS client's verified certificate (read once per connection), None over plain HTTP
    end_user_authorization: bool = False  # Authorization is the end user's, passed on (the client used its certificate)
    # response side
    status: int = 0
    response_body: bytes = b""
    response_headers: list[tuple[str, str]] = field(default_factory=list)  # lower-case names, repeats kept
    error_code: str | None = None  # set when the mesh, not the provider, failed or refused
    # X-Road operational-monitoring times (time.time())
    request_in: float = field(default_factory=time.time)
    request_out: float = 0.0
    response_in: float = 0.0
    response_out: float = 0.0


def read_subjects(ctx: CallContext) -> list[str]:
    """The call's subject identifiers (and ctx.items), read once from the locations its endpoint declares.

    Raises Problem (400 naming the field, 413) the first time a declared location cannot be read; the policy that
    asks first in the access phase refuses the call with it, later readers (the log phase) get an empty list."""
    if ctx.subjects is not None:
        return ctx.subjects
    ctx.subjects = []  # set first: a refused read is neither retried nor raised again
    spec = ctx.endpoint.subjects if ctx.endpoint is not None else None
    if spec is not None:
        ctx.subjects, ctx.items = extract(spec, ctx.path_params, ctx.query, ctx.headers, ctx.body)
    return ctx.subjects


class Policy(Protocol):
    """One policy module; lower priority runs first in access, last in response and log."""

    name: str
    priority: int

    def access(self, ctx: CallContext) -> None: ...

    def response(self, ctx: CallContext) -> None: ...

    def log(self, ctx: CallContext) -> None: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class PolicyBase:
    """Do-nothing hooks so a policy defines only the phases it uses."""

    name = "base"
    priority = 1000

    def access(self, ctx: CallContext) -> None:
        return None

    def response(self, ctx: CallContext) -> None:
        return None

    def log(self, ctx: CallContext) -> None:
        return None

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None
