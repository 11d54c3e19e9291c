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

import base64
import hashlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import jwt

from gateway import metaservices, metrics
from gateway.assertions import ASSERTION_HEADER, AssertionSigner
from gateway.paths import R1Path, parse_r1
from gateway.snapshot_client import SnapshotClient
from gateway.upstream import UpstreamClient, UpstreamResponse
from lienthong import pki
from lienthong.problem import PROBLEM_MEDIA_TYPE, Problem
from lienthong.upstream_policy import UpstreamPolicy
from policies.authn import check_service
from policies.base import CallContext
from policies.chain import Chain

# Only these client headers travel on; everything else (Authorization, X-Road-Client, hop-by-hop,
# X-HTTP-Method-Override and friends) stops at the gateway that received it.
TO_CONNECTOR = ("content-type", "accept", "accept-language", "idempotency-key", "tracestate")
TO_GATEWAY = (*TO_CONNECTOR, "x-road-userid", "x-road-issue", "x-purpose")
# Headers the gateway itself sets on the way back; a connector's own copies are dropped.
OWN_RESPONSE_HEADERS = frozenset(
    {"x-road-id", "x-road-request-hash", "x-road-request-id", "x-road-client", "x-road-service", "x-road-error",
     "content-length", "server", "date"}
)
FORWARD_TIMEOUT_MARGIN_MS = 1000  # the hosting gateway's own 504 should arrive before ours
MAX_TRANSACTION_ID = 128


@dataclass(slots=True)
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes


def request_hash(method: str, raw_path: str, query: bytes, body: bytes) -> str:
    """base64 SHA-256 over 'METHOD\\nPATH\\nQUERY\\n' + body, the request as this gateway received it (§3)."""
    digest = hashlib.sha256(f"{method}\n{raw_path}\n".encode("latin-1") + query + b"\n" + body).digest()
    return base64.b64encode(digest).decode()


def problem_reply(problem: Problem, instance: str | None = None) -> Reply:
    headers = {"content-type": PROBLEM_MEDIA_TYPE, "x-road-error": problem.code}
    headers.update({k.lower(): v for k, v in problem.headers.items()})
    return Reply(problem.status, headers, problem.to_bytes(instance))


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
        try:
            txid = transaction_id(headers)
        except Problem as problem:
            return problem_reply(problem), None
        rhash = request_hash(method, raw_path, query, body)
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
            reply = problem_reply(problem)
            if ctx is not None:
                ctx.status, ctx.error_code = problem.status, problem.code
                ctx.response_body, ctx.response_headers = reply.body, reply.headers
        headers_out = reply.headers
        headers_out["x-road-id"] = txid
        headers_out["x-road-request-hash"] = rhash
        # PR-REST "X-Road specific headers returned in the response": the client and service as this gateway
        # established them (never a connector's), and a unique id of this request
        headers_out["x-road-request-id"] = new_transaction_id()
        if ctx is not None:
            if ctx.client:
                headers_out["x-road-client"] = ctx.client
            if ctx.service_id:
                headers_out["x-road-service"] = ctx.service_id
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
        return Reply(200, {"content-type": content_type}, body)

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
        ctx.response_headers = {k: v for k, v in upstream.headers if k not in OWN_RESPONSE_HEADERS}
        if ctx.role == "home":
            # the hosting gateway's refusal or failure is still the mesh's, and says so
            mesh_error = next((v for k, v in upstream.headers if k == "x-road-error"), None)
            if mesh_error:
                ctx.error_code = mesh_error
                ctx.response_headers["x-road-error"] = mesh_error
        try:
            self.chain.response(ctx)
        except Problem as problem:
            ctx.status, ctx.error_code = problem.status, problem.code
            reply = problem_reply(problem)
            ctx.response_body, ctx.response_headers = reply.body, reply.headers
        return Reply(ctx.status, ctx.response_headers, ctx.response_body)

    def _outbound_headers(self, ctx: CallContext, names: tuple[str, ...], assertion: str) -> dict[str, str]:
        out = {name: ctx.headers[name] for name in names if name in ctx.headers}
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
        target = route.raw_provider_path
        if ctx.query:
            target += "?" + ctx.query.decode("latin-1")
        headers = self._outbound_headers(ctx, TO_CONNECTOR, self.signer.to_connector(ctx))
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
        target = f"/r1/{ctx.service_id}{rest}"
        if ctx.query:
            target += "?" + ctx.query.decode("latin-1")
        headers = self._outbound_headers(ctx, TO_GATEWAY, self.signer.to_gateway(ctx, host))
        timeout_ms = (ctx.service.timeout_ms if ctx.service else 5000) + FORWARD_TIMEOUT_MARGIN_MS
        what = f"hosting gateway {host}"
        peer = pki.identity("gateway", host)  # the hosting gateway's certificate
        return await self._send(ctx, base, target, headers, timeout_ms, what, metrics.UPSTREAM_GATEWAY, None, peer)

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
