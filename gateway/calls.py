"""One `/r1` call from request in to response out: route, run the policy chain, call the connector or forward.

Roles (protocol §8): a request carrying X-Lienthong-Assertion is the *provider* role (another gateway forwarded it;
the service must be hosted here, never a second hop). Otherwise the caller is a client: *local* when this gateway
hosts the service, *home* when it forwards to the hosting gateway with its own signed assertion.

Order: path syntax (400 `invalid-path`, the same whatever the catalogue holds), then authn (Chain.identify), and only
then routing, so a caller without valid credentials gets the same 401 for a service that exists and one that does not.

TLS (protocol §9.x): a client certificate whose serial the snapshot revokes is refused on any call (403
`certificate-revoked`); a provider-role call (the mesh hop) must come with the certificate of the gateway that signed
its assertion (401 `client-certificate-required`, 403 `certificate-identity-mismatch`), unless this gateway serves
plain HTTP (--insecure-http, development).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import jwt

from gateway import metaservices, metrics, xroad_errors
from gateway.assertions import ASSERTION_HEADER, AssertionSigner
from gateway.paths import R1Path, parse_r1
from gateway.request_hash import request_hash
from gateway.snapshot_client import SnapshotClient
from gateway.upstream import HOP_BY_HOP, UpstreamClient, UpstreamResponse
from lienthong import pki
from lienthong.problem import PROBLEM_MEDIA_TYPE, Problem
from lienthong.upstream_policy import UpstreamPolicy
from policies.authn import check_service
from policies.base import CallContext
from policies.chain import Chain

# What a gateway never passes on to the next hop (PR-REST 1.0.4 §4.3 "Filtered headers": hop-by-hop fields and those
# that leak the origin host; plus method overrides, which must never change what was authorized, and the X-Road
# fields the gateway itself sets or consumes). Every other client header travels unmodified (§4.3 "User defined
# headers", "Cache headers"). X-Road-Client, X-Road-Id, traceparent and the assertion are set by the gateway;
# Authorization only when it is the end user's (policies/authn.py); Accept-Encoding is dropped because the mesh
# reads the answer (minimization, subjects in the response) and so needs it uncompressed.
NOT_FORWARDED = HOP_BY_HOP | frozenset(
    {
        "user-agent", "server", "expect", "accept-encoding",
        "forwarded", "via", "x-forwarded-for", "x-forwarded-host", "x-forwarded-proto", "x-forwarded-port",
        "x-real-ip", "x-http-method-override", "x-http-method", "x-method-override", "authorization",
        "x-road-client", "x-road-id", "x-road-request-hash", "x-road-request-id", "x-road-service", "x-road-error",
        "x-road-security-server", "traceparent",
    }
)  # fmt: skip
MESH_HEADERS = "x-lienthong-"  # the mesh's own namespace (the assertion): never taken from outside
# Headers the gateway itself sets on the way back; a connector's own copies are dropped.
OWN_RESPONSE_HEADERS = frozenset(
    {"x-road-id", "x-road-request-hash", "x-road-request-id", "x-road-client", "x-road-service", "x-road-error",
     "content-length", "server", "date"}
)  # fmt: skip
# The upstream call's failures, by the X-Road type's last part when the side decides it (CallHandler._send)
HOP_FAILURES = {
    "upstream-failed": "NetworkError",
    "upstream-timeout": "NetworkError",
    "circuit-open": "NetworkError",
    "certificate-identity-mismatch": "SslAuthenticationFailed",
    "certificate-revoked": "SslAuthenticationFailed",
}
FORWARD_TIMEOUT_MARGIN_MS = 1000  # the hosting gateway's own 504 should arrive before ours
MAX_TRANSACTION_ID = 128


Headers = list[tuple[str, str]]  # lower-case names; a repeated field (Set-Cookie, Link) is several entries


@dataclass(slots=True)
class Reply:
    status: int
    headers: Headers
    body: bytes
    error: str = ""  # lienthong's code when the mesh refused or failed (metrics label it), else ""


def problem_reply(problem: Problem, instance: str | None = None) -> Reply:
    headers = [("content-type", PROBLEM_MEDIA_TYPE), ("x-road-error", problem.code)]
    headers.extend((k.lower(), v) for k, v in problem.headers.items())
    return Reply(problem.status, headers, problem.to_bytes(instance), problem.code)


def refusal_reply(problem: Problem, accept: str, tracking_id: str, relayed: bool = False) -> Reply:
    """A refusal on /r1 in X-Road's shape (gateway/xroad_errors.py): X-Road-Error, status and body as the client's
    Accept asks; the reply keeps lienthong's code for the metrics."""
    status, headers, body = xroad_errors.render(problem, accept=accept, tracking_id=tracking_id, relayed=relayed)
    return Reply(status, list(headers.items()), body, problem.code)


def request_target(raw_path: str, query: bytes) -> str:
    return f"{raw_path}?{query.decode('latin-1')}" if query else raw_path


def new_transaction_id() -> str:
    """A UUID4 in hex, as uuid.uuid4().hex makes it, at a third of its cost (no UUID object)."""
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40
    raw[8] = (raw[8] & 0x3F) | 0x80
    return raw.hex()


def transaction_id(headers: dict[str, str]) -> str:
    given = headers.get("x-road-id")
    if not given:
        return new_transaction_id()
    if len(given) > MAX_TRANSACTION_ID or not given.isprintable() or not given.isascii():
        raise Problem(400, "invalid-parameter", "X-Road-Id must be 1-128 printable ASCII characters", field="X-Road-Id")
    return given


def _check_gateway_peer(ctx: CallContext) -> None:
    """The mesh hop: the TLS client must be the gateway that signed the (verified) assertion."""
    expected = pki.identity("gateway", str(ctx.consumer_gateway))
    peer = ctx.peer
    if peer is None or peer.identity != expected:
        raise Problem(403, "certificate-identity-mismatch", f"the client certificate is not {expected}, the gateway "
                      "that signed the assertion", field="certificate")  # fmt: skip


class CallHandler:
    """The hot path; one per worker process."""

    def __init__(
        self,
        *,
        code: str,
        snapshots: SnapshotClient,
        chain: Chain,
        signer: AssertionSigner,
        upstream: Callable[[], UpstreamClient],
        authn_enabled: bool,
        tls: bool = False,
    ) -> None:
        self.code = code
        self.snapshots = snapshots
        self.chain = chain
        self.signer = signer
        self._upstream = upstream
        self.authn_enabled = authn_enabled
        self.tls = tls  # the mesh hop's certificate is required (off only with --insecure-http)

    async def handle(
        self,
        method: str,
        raw_path: str,
        query: bytes,
        headers: dict[str, str],
        body: bytes,
        started: float,
        body_refused: Problem | None = None,
        peer: pki.Peer | None = None,
    ) -> tuple[Reply, CallContext | None]:
        """Answer one call; the context (when routing got that far) is returned for the log phase.

        `body_refused` is the server's refusal of the body (too large): answered here, after the context exists,
        so that it is audited like every other refusal."""
        request_id = new_transaction_id()  # X-Road-Request-Id, and the `detail` of an X-Road error body
        # the mesh hop (an assertion came) always gets problem+json, which the home gateway renders for its client
        accept = PROBLEM_MEDIA_TYPE if ASSERTION_HEADER in headers else headers.get("accept", "")
        try:
            txid = transaction_id(headers)
        except Problem as problem:
            reply = refusal_reply(problem, accept, request_id)
            reply.headers.append(("x-road-request-id", request_id))  # the body's `detail` names it
            return reply, None
        rhash = request_hash(method, request_target(raw_path, query), headers.items(), body)
        ctx: CallContext | None = None
        try:
            snapshot = self.snapshots.current
            if snapshot is None or started - self.snapshots.confirmed_at > self.snapshots.max_age:
                detail = self.snapshots.staleness(started).detail
                raise Problem(503, "snapshot-expired", detail, headers={"Retry-After": "5"})
            ctx = CallContext(
                gateway=self.code,
                transaction_id=txid,
                method=method,
                path="",
                query=query,
                headers=headers,
                body=body,
                snapshot=snapshot,
                request_hash=rhash,
                request_in=started,
                peer=peer,
            )
            route = parse_r1(raw_path)  # after the context exists, so that a refused path is audited too
            ctx.path = route.provider_path
            if body_refused is not None:
                raise body_refused
            # who is calling, before any answer that depends on the catalogue (unknown service, endpoint, method)
            ctx.role = "provider" if headers.get(ASSERTION_HEADER) else "local"
            if peer is not None and peer.serial in snapshot.revoked_serials:
                raise Problem(403, "certificate-revoked", "the client certificate is revoked", field="certificate")
            if ctx.role == "provider" and self.tls and peer is None:  # before any assertion work
                raise Problem(401, "client-certificate-required", "a call from another gateway must come over TLS "
                              "with that gateway's client certificate", field="certificate")  # fmt: skip
            self.chain.identify(ctx)
            if ctx.role == "provider" and self.tls and self.authn_enabled:
                _check_gateway_peer(ctx)
            if route.metaservice is not None:
                reply = self._metaservice(ctx, route)
            else:
                reply = await self._service_call(ctx, route)
        except Problem as problem:
            reply = refusal_reply(problem, accept, request_id, relayed=problem.xroad_relayed)
            if ctx is not None:  # audit and metrics keep lienthong's status and code (docs/protocol.md §6)
                ctx.status, ctx.error_code = problem.status, problem.code
                ctx.response_body, ctx.response_headers = reply.body, reply.headers
        headers_out = reply.headers
        headers_out.append(("x-road-id", txid))
        # at the home gateway, the hosting gateway's hash (verified in _forward); else this gateway's own
        headers_out.append(("x-road-request-hash", ctx.request_hash if ctx is not None else rhash))
        # PR-REST "X-Road specific headers returned in the response": the client and service as this gateway
        # established them (never a connector's), and a unique id of this request
        headers_out.append(("x-road-request-id", request_id))
        if ctx is not None:
            if ctx.client:
                headers_out.append(("x-road-client", ctx.client))
            if ctx.service_id:
                headers_out.append(("x-road-service", ctx.service_id))
        return reply, ctx

    # -- metaservices ------------------------------------------------------------------------------------------

    def _metaservice(self, ctx: CallContext, route: R1Path) -> Reply:
        """Metaservices need a valid client token (§2), already checked by Chain.identify, but no grant."""
        if ctx.role == "provider":
            raise Problem(404, "unknown-service", "metaservices are answered by the caller's home gateway")
        if ctx.method != "GET":
            raise Problem(400, "invalid-parameter", f"{route.metaservice} answers GET only", field="method")
        if not self.authn_enabled:
            self._unverified_identity(ctx)
        content_type, body = metaservices.answer(
            ctx.snapshot, str(route.metaservice), route.subsystem, str(ctx.client), ctx.query,
            ctx.headers.get("accept", ""),
        )  # fmt: skip
        ctx.status = 200
        return Reply(200, [("content-type", content_type)], body)

    # -- service calls -----------------------------------------------------------------------------------------

    async def _service_call(self, ctx: CallContext, route: R1Path) -> Reply:
        snapshot = ctx.snapshot
        service_id = str(route.service_id)
        service = snapshot.services.get(service_id)
        provider = ctx.role == "provider"
        if service is None:
            if service_id in snapshot.quarantined_services:  # in the snapshot, but this gateway could not build it
                raise Problem(503, "service-quarantined", snapshot.quarantined_services[service_id], field="path")
            raise Problem(404, "unknown-service", f"no service {service_id} in the mesh", field="path")
        if provider and service.gateway != self.code:
            raise Problem(
                404, "unknown-service", f"service {service_id} is not hosted by gateway {self.code}", field="path"
            )
        matched = service.match(ctx.method, route.provider_path)
        if matched is None:
            raise Problem(
                404,
                "unknown-endpoint",
                f"{service_id} has no endpoint {ctx.method} {route.provider_path}",
                field="path",
            )
        ctx.service_id, ctx.service = service_id, service
        ctx.endpoint, ctx.path_params = matched
        ctx.provider_gateway = service.gateway
        if provider:
            check_service(ctx, service_id)  # the assertion authn verified must name this very service
        else:
            ctx.role = "local" if service.gateway == self.code else "home"

        self.chain.authorize(ctx)  # a Problem here already carries ctx.status / error_code
        if not self.authn_enabled:
            self._unverified_identity(ctx)

        ctx.request_out = time.time()
        if ctx.role == "home":
            upstream = await self._forward(ctx, route)
        else:
            upstream = await self._connector(ctx, route)
        ctx.response_in = time.time()

        ctx.status = upstream.status
        ctx.response_body = upstream.body
        ctx.response_headers = [(k, v) for k, v in upstream.headers if k not in OWN_RESPONSE_HEADERS]
        if ctx.role == "home":
            # the hosting gateway's refusal or failure is still the mesh's: rendered here for this client, with the
            # provider side's X-Road type (handle() answers it)
            relayed = xroad_errors.problem_from_relay(upstream.status, upstream.headers, upstream.body)
            if relayed is not None:
                relayed.xroad_relayed = True
                raise relayed
        self.chain.response(ctx)  # a refusal here (minimize) is answered by handle(), none of the provider's headers
        return Reply(ctx.status, ctx.response_headers, ctx.response_body)

    def _outbound_headers(self, ctx: CallContext, assertion: str) -> dict[str, str]:
        """The client's headers as the next hop gets them (NOT_FORWARDED), and the mesh's own."""
        # RFC 9110 §7.6.1: the fields Connection names are hop-by-hop too
        named = {n.strip().lower() for n in ctx.headers.get("connection", "").split(",")}
        out = {
            name: value
            for name, value in ctx.headers.items()
            if name not in NOT_FORWARDED and name not in named and not name.startswith(MESH_HEADERS)
        }
        # the end user's credential, never the client's own mesh token (policies/authn.py decides which it is)
        # (at the hosting gateway, an Authorization the home gateway passed on is the end user's by then)
        if (ctx.end_user_authorization or ctx.role == "provider") and "authorization" in ctx.headers:
            out["authorization"] = ctx.headers["authorization"]
        if ctx.client:
            out["x-road-client"] = ctx.client  # as the mesh established it (PR-REST §4.3)
        traceparent = ctx.traceparent or ctx.headers.get("traceparent")
        if traceparent:
            out["traceparent"] = traceparent
        out["x-road-id"] = ctx.transaction_id
        out[ASSERTION_HEADER] = assertion
        return out

    async def _connector(self, ctx: CallContext, route: R1Path) -> UpstreamResponse:
        base = ctx.snapshot.upstreams.get(str(ctx.service_id))
        if not base:
            raise Problem(502, "upstream-failed", f"no connector address is registered for {ctx.service_id} here")
        target = request_target(route.raw_provider_path, ctx.query)
        headers = self._outbound_headers(ctx, self.signer.to_connector(ctx))
        timeout_ms = ctx.service.timeout_ms if ctx.service else 5000
        what = f"the connector of {ctx.service_id}"
        policy = ctx.snapshot.upstream_policy  # checked once per new connection (gateway.upstream)
        peer = pki.identity("subsystem", ctx.service.provider if ctx.service else "")  # the connector's certificate
        return await self._send(ctx, base, target, headers, timeout_ms, what, metrics.UPSTREAM_CONNECTOR, policy, peer)

    async def _forward(self, ctx: CallContext, route: R1Path) -> UpstreamResponse:
        host = str(ctx.provider_gateway)
        gateway = ctx.snapshot.gateways.get(host)
        if gateway is None or not gateway.get("base_url"):
            raise Problem(502, "upstream-failed", f"hosting gateway {host} has no address in the snapshot")
        base = str(gateway["base_url"])
        rest = route.raw_provider_path if route.raw_provider_path != "/" else ""
        target = request_target(f"/r1/{ctx.service_id}{rest}", ctx.query)
        headers = self._outbound_headers(ctx, self.signer.to_gateway(ctx, host))
        timeout_ms = (ctx.service.timeout_ms if ctx.service else 5000) + FORWARD_TIMEOUT_MARGIN_MS
        what = f"hosting gateway {host}"
        peer = pki.identity("gateway", host)  # the hosting gateway's certificate
        upstream = await self._send(ctx, base, target, headers, timeout_ms, what, metrics.UPSTREAM_GATEWAY, None, peer)
        # PR-REST §4.3: the provider's security server makes X-Road-Request-Hash, the client's verifies it
        expected = request_hash(ctx.method, target, headers.items(), ctx.body)
        received = next((v for k, v in upstream.headers if k == "x-road-request-hash"), "")
        if received != expected:
            raise Problem(502, "inconsistent-response", f"hosting gateway {host} answered with an X-Road-Request-Hash "
                          "that is not the hash of the request this gateway sent")  # fmt: skip
        ctx.request_hash = received  # both gateways' audit records now carry the same hash
        return upstream

    async def _send(
        self, ctx: CallContext, base: str, target: str, headers: dict[str, str], timeout_ms: int, what: str,
        timer: metrics.Timing, policy: UpstreamPolicy | None = None, peer: str | None = None,
    ) -> UpstreamResponse:  # fmt: skip
        """One upstream call (connector or hosting gateway), timed into its histogram; over TLS the server's
        certificate must name `peer` and not be revoked (checked once per new connection)."""
        started = time.perf_counter()
        try:
            return await self._upstream().call(
                method=ctx.method, base=base, target=target, headers=headers, body=ctx.body,
                timeout_ms=timeout_ms, what=what, policy=policy,
                peer=peer, revoked=ctx.snapshot.revoked_serials,
            )  # fmt: skip
        except Problem as problem:
            # X-Road names a failure by the side it happened on: reaching the hosting gateway is the client proxy's
            # (NetworkError), reaching the connector the provider's (the table's ServiceFailed / NetworkError)
            failure = HOP_FAILURES.get(problem.code)
            if failure is not None and problem.xroad is None:
                side = "Server.ClientProxy." if ctx.role == "home" else "Server.ServerProxy."
                if ctx.role == "home" or failure == "SslAuthenticationFailed":
                    problem.xroad = side + failure
            raise
        finally:
            timer.observe(time.perf_counter() - started)

    def _unverified_identity(self, ctx: CallContext) -> None:
        """Bare pass-through (authn disabled, benchmarks only): take the identity as claimed, verify nothing."""
        if ctx.client is not None:
            return
        if ctx.role == "provider":
            try:
                claims = jwt.decode(ctx.headers.get(ASSERTION_HEADER, ""), options={"verify_signature": False})
            except jwt.PyJWTError:
                claims = {}
            ctx.client, ctx.purpose = claims.get("sub"), claims.get("purpose")
            ctx.user_id, ctx.issue = claims.get("uid"), claims.get("issue")
            ctx.consumer_gateway = claims.get("iss")
            return
        ctx.client = ctx.headers.get("x-road-client")
        ctx.purpose = ctx.headers.get("x-purpose")
        ctx.user_id = ctx.headers.get("x-road-userid")
        ctx.issue = ctx.headers.get("x-road-issue")
        ctx.consumer_gateway = self.code
