"""The gateway's application: `/r1/...` on the hand-written hot path, health, metrics and the ops API.

No web framework sits on the hot path: the server (gateway.http_server) calls `r1` directly for every `/r1/` path,
however it is spelled, and the rest arrives as ASGI, dispatched by a few string comparisons. Each worker process
builds one app through `create_app()`, reading its configuration from LIENTHONG_* variables (gateway.settings).

With --ops-listen the operations API and /metrics are served only on that socket (`OpsListener`), where /metrics
needs no token (Prometheus scrapes it; the address is meant to be private), and the main port answers 404 for them.
Without it they share the main port: the ops API needs its token (gateway/ops_auth.py), and /metrics answers a
loopback client whose Host names the gateway, or an operator token.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import logging
import os
import ssl
import time
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

import orjson

from gateway import metrics
from gateway.assertions import AssertionSigner
from gateway.breaker import Breakers
from gateway.calls import CallHandler, Reply, problem_reply
from gateway.ops_auth import HostNames, OpsGate, load_operator_keys
from gateway.settings import GatewaySettings
from gateway.snapshot_client import SnapshotClient, load_registry_key
from gateway.upstream import UpstreamClient, client_tls
from lienthong import keys, pki
from lienthong.background import stop_task
from lienthong.cert_renewal import CertificateRenewer
from lienthong.pki import Peer
from lienthong.problem import Problem
from lienthong.snapshot import Snapshot
from lienthong.upstream_policy import endpoints_of
from policies.chain import ChainConfig, build_chain

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

log = logging.getLogger("lienthong.gateway")


def derive_audit_key(private_key: keys.PrivateKey) -> bytes:
    """Every worker of one gateway must chain audit records with the same key; derive it from the gateway key."""
    return hashlib.sha256(b"lienthong-audit-hmac\0" + keys.private_pem(private_key)).digest()


def chain_config(settings: GatewaySettings, private_key: keys.PrivateKey) -> ChainConfig:
    return ChainConfig(
        gateway=settings.code,
        data_dir=settings.data_dir,
        redis_url=settings.redis_url,
        enabled=settings.policies,
        audit_hmac_key=settings.audit_hmac_key or derive_audit_key(private_key),
        trace_sample_ratio=settings.trace_sample_ratio,
        transaction_log_url=settings.transaction_log_url,
        transaction_log_retention_days=settings.transaction_log_retention_days,
    )


async def send_reply(send: Send, reply: Reply) -> None:
    raw = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in reply.headers]
    raw.append((b"content-length", str(len(reply.body)).encode()))
    await send({"type": "http.response.start", "status": reply.status, "headers": raw})
    await send({"type": "http.response.body", "body": reply.body})


class GatewayApp:
    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.body_limit = settings.body_limit
        private_key = keys.load_private(settings.key_file)
        self.snapshots = SnapshotClient(
            code=settings.code,
            registry_url=settings.registry_url,
            registry_key=load_registry_key(settings.registry_key_file),
            key=private_key,
            kid=settings.kid,
            cache_path=settings.snapshot_cache,
            max_age=settings.max_snapshot_age,
            wait=settings.snapshot_wait,
            ca=settings.cert_files.ca,
        )
        self.chain_config = chain_config(settings, private_key)
        self.chain = build_chain(self.chain_config)
        self._audit = next((p for p in self.chain.policies if p.name == "audit"), None)
        self._meter = next((p for p in self.chain.policies if p.name == "meter"), None)
        self.breakers = Breakers(settings.breaker_failures, settings.breaker_open_seconds)
        self._upstream: UpstreamClient | None = None
        self.calls = CallHandler(
            code=settings.code,
            snapshots=self.snapshots,
            chain=self.chain,
            signer=AssertionSigner(settings.code, private_key, settings.kid),
            upstream=self.upstream,
            authn_enabled="authn" in settings.policies,
            tls=not settings.insecure_http,
        )
        self.ops_app: ASGIApp | None = None
        self.ops_gate = ops_gate(settings, private_key, lambda: self.snapshots.current)
        self._metrics_task: asyncio.Task[None] | None = None
        self._private_key = private_key
        self._renewer: CertificateRenewer | None = None

    def start_renewal(self, contexts: Iterable[ssl.SSLContext]) -> None:
        """Renew this gateway's certificate at two thirds of its life (lienthong.cert_renewal), reloading the
        listening ports' contexts and the upstream client's: new handshakes get the new certificate, open
        connections keep theirs. Every worker runs one; a worker that finds a sibling's renewal on disk loads it (two
        that race both renew: harmless, the key is the same and both certificates are valid). Without certificate
        files (plain-HTTP development) there is nothing to renew."""
        files = self.settings.cert_files
        if not files.exists():
            return
        live = list(contexts)
        upstream_tls = self.upstream().tls
        if upstream_tls is not None:
            live.append(upstream_tls)
        identity = pki.identity("gateway", self.settings.code)
        self._renewer = CertificateRenewer(files, identity, self._request_certificate, live)
        self._renewer.start()

    def _request_certificate(self, csr: bytes) -> dict[str, Any]:
        """POST /v1/certificates, signed with the gateway's key, the one the registry holds for it (§9)."""
        from registry.client import RegistryClient, RegistryError

        failure: Exception | None = None
        for url in self.settings.registry_urls:  # any registry of the mesh signs; the next one when one is down
            ca = self.settings.cert_files.ca if url.lower().startswith("https:") else None
            try:
                with RegistryClient(url, key=self._private_key, kid=self.settings.kid,
                                    iss=f"gateway:{self.settings.code}", ca=ca) as client:  # fmt: skip
                    return client.request_certificate(csr)
            except (RegistryError, OSError) as exc:
                if isinstance(exc, RegistryError) and 0 < exc.status < 500:
                    raise  # a refusal, not an outage (0: unreachable): another registry would refuse it too
                failure = exc
        raise failure or RuntimeError("no registry URL")

    def upstream(self) -> UpstreamClient:
        if self._upstream is None:  # made lazily, inside the worker's event loop
            own = endpoints_of([f"http://{self.settings.host}:{self.settings.port}", self.settings.redis_url,
                                *self.settings.registry_urls])  # refused as connectors  # fmt: skip
            self._upstream = UpstreamClient(self.breakers, own, client_tls(self.settings.cert_files))
        return self._upstream

    async def startup(self) -> None:
        await self.snapshots.start()
        await self.chain.start()
        self._metrics_task = asyncio.create_task(metrics.flush_forever(), name="metrics-flush")
        try:
            from gateway.ops_api import build_ops_app  # the ops API is a separate part; absent until it lands
        except ImportError:
            log.warning("gateway.ops_api is not installed; /ops/v1 answers 404")
        else:
            from gateway.ops_components import Local

            self.ops_app = build_ops_app(self.chain_config, lambda: self.snapshots.current, self.ops_gate,
                                         Local.of(self))  # fmt: skip

    async def shutdown(self) -> None:
        if self._renewer is not None:
            await self._renewer.stop()
        await stop_task(self._metrics_task)
        metrics.flush()
        await self.chain.stop()
        await self.snapshots.stop()
        if self._upstream is not None:
            await self._upstream.close()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The main port's non-/r1 requests."""
        await self.route(scope, receive, send, ops_port=False)

    def ops_listener(self) -> OpsListener:
        """The app of the --ops-listen socket."""
        return OpsListener(self)

    async def route(self, scope: Scope, receive: Receive, send: Send, ops_port: bool) -> None:
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        ops_here = ops_port or not self.settings.ops_listen
        if path == "/healthz":
            await self._healthz(send)
        elif path == "/readyz":
            await self._readyz(send)
        elif path == "/metrics" and ops_here:
            await self._metrics(scope, send, open_=ops_port)
        elif (path == "/ops/v1" or path.startswith("/ops/v1/")) and ops_here:
            await self._ops(scope, receive, send)
        else:
            await send_reply(send, problem_reply(Problem(404, "unknown-service", f"no route {path}", field="path")))

    async def _metrics(self, scope: Scope, send: Send, open_: bool) -> None:
        """Prometheus text; on the main port only for a loopback client that names the gateway, or an operator."""
        if not open_:
            try:
                headers = scope.get("headers", [])
                self.ops_gate.check_host(headers)
                client = scope.get("client")
                if not (client and _loopback(str(client[0]))) and not self.ops_gate.principal(headers).operator:
                    raise Problem(403, "access-denied", "only an operator token may read /metrics from another host",
                                  field="Authorization")  # fmt: skip
            except Problem as problem:
                await send_reply(send, problem_reply(problem))
                return
        body, content_type = metrics.render()
        await send_reply(send, Reply(200, [("content-type", content_type)], body))

    async def r1(
        self, method: str, raw_path: str, query: bytes, headers: dict[str, str], body: bytes, started: float,
        body_refused: Problem | None = None, peer: Peer | None = None,
    ) -> Reply:  # fmt: skip
        """One /r1 call, log phase included; the server (gateway.http_server) calls this directly, with the TLS
        client's certificate when it sent one."""
        reply, ctx = await self.calls.handle(method, raw_path, query, headers, body, started, body_refused, peer)
        routed = ctx is not None and ctx.service is not None
        # Meter and audit before the reply leaves: a kill -9 can then never leave a call the client saw uncounted.
        if ctx is not None:
            ctx.response_out = time.time()
            if routed:
                self.chain.log(ctx)
            elif reply.status >= 400:  # refused before routing: no token, a path trick, no such service
                if self._meter is not None:  # counted as the client's error, its consumer (unidentified) if unknown
                    self._meter.log(ctx)
                if self._audit is not None:
                    self._audit.log(ctx)
        role = ctx.role if ctx is not None and routed else "none"
        metrics.count(role, reply.status, reply.error, time.time() - started, ctx if routed else None)
        return reply

    async def _healthz(self, send: Send) -> None:
        current = self.snapshots.current
        body = {
            "status": "ok",
            "gateway": self.settings.code,
            "pid": os.getpid(),
            "snapshot_version": current.version if current else None,
            "quarantined": sorted(current.quarantined_services) if current else [],  # services it could not build
        }
        await send_reply(send, Reply(200, [("content-type", "application/json")], orjson.dumps(body)))

    async def _readyz(self, send: Send) -> None:
        stale = self.snapshots.staleness()
        current = self.snapshots.current
        if stale.stale or current is None:
            problem = Problem(503, "snapshot-expired", stale.detail, headers={"Retry-After": "5"})
            await send_reply(send, problem_reply(problem))
            return
        metrics.SNAPSHOT_VERSION.set(current.version)
        metrics.SNAPSHOT_CONFIRMED.set(self.snapshots.confirmed_at)
        body = {
            "status": "ready",
            "gateway": self.settings.code,
            "snapshot_version": current.version,
            "snapshot_age_seconds": round(time.time() - self.snapshots.confirmed_at, 3),
            "max_snapshot_age_seconds": self.settings.max_snapshot_age,
        }
        await send_reply(send, Reply(200, [("content-type", "application/json")], orjson.dumps(body)))

    async def _ops(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.ops_app is None:
            await send_reply(
                send, problem_reply(Problem(404, "unknown-service", "the operations API is not available"))
            )
            return
        # mounted the classic ASGI way: the prefix moves from path to root_path
        sub = dict(scope)
        sub["root_path"] = scope.get("root_path", "") + "/ops/v1"
        sub["path"] = scope["path"][len("/ops/v1") :] or "/"
        raw = scope.get("raw_path")
        if raw:
            sub["raw_path"] = raw[len(b"/ops/v1") :] or b"/"
        await self.ops_app(sub, receive, send)


class OpsListener:
    """The --ops-listen socket: the operations API, /metrics without a token and the probes; no /r1 calls."""

    def __init__(self, app: GatewayApp) -> None:
        self.app = app
        self.body_limit = app.body_limit

    async def r1(
        self, method: str, raw_path: str, query: bytes, headers: dict[str, str], body: bytes, started: float,
        body_refused: Problem | None = None, peer: Peer | None = None,
    ) -> Reply:  # fmt: skip
        return problem_reply(Problem(404, "unknown-service", "calls are served on the gateway's main port, not on its "
                                     "operations port", field="path"))  # fmt: skip

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app.route(scope, receive, send, ops_port=True)


def ops_gate(
    settings: GatewaySettings, private_key: keys.PrivateKey, snapshot_getter: Callable[[], Snapshot | None]
) -> OpsGate:
    """The operations API's gate: operator keys (the gateway's own, under its kid and its thumbprint, and the
    --ops-operator-key files) and the Host names (its listen addresses, loopback, --ops-host names)."""
    public = private_key.public_key()
    operators: dict[str, keys.PublicKey] = {settings.kid: public, keys.public_jwk(public)["kid"]: public}
    operators.update(load_operator_keys(settings.ops_operator_keys))
    listen = [(settings.host, settings.port)]
    if settings.ops_address is not None:
        listen.append(settings.ops_address)
    return OpsGate(settings.code, operators, HostNames.build(listen, settings.ops_hosts), snapshot_getter)


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def create_app() -> GatewayApp:
    """One app per worker, configured from the environment the CLI wrote."""
    logging.basicConfig(
        level=os.environ.get("LIENTHONG_LOG_LEVEL", "INFO"), format="%(levelname)s %(name)s %(message)s"
    )
    return GatewayApp(GatewaySettings.from_env())
