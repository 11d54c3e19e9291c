"""build_app: a connector as an ASGI app. connexion serves the OpenAPI document's operations; a thin pure-ASGI layer
in front answers /healthz and /readyz, refuses any other request without a valid gateway assertion (401) and hands
the verified claims to handlers (CallInfo). A connector whose document and handlers disagree, or whose document is
invalid, is refused when it is built (validation.check_connector: ConnectorUnusable). Served over TLS
(config.tls_dir, connectors.sdk.tls), every request, the probes included, must come on a connection whose client
certificate is the hosting gateway's."""

from __future__ import annotations

import asyncio
import functools
import importlib
import logging
from typing import Any

import anyio
import orjson
from connexion import AsyncApp
from connexion.exceptions import ProblemException
from connexion.middleware.context import ContextMiddleware
from connexion.middleware.exceptions import ExceptionMiddleware
from connexion.middleware.lifespan import LifespanMiddleware
from connexion.middleware.request_validation import RequestValidationMiddleware
from connexion.middleware.routing import RoutingMiddleware
from connexion.middleware.security import SecurityMiddleware
from connexion.options import SwaggerUIOptions
from connexion.resolver import Resolver
from starlette.exceptions import HTTPException
from starlette.middleware.errors import ServerErrorMiddleware
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from connectors.sdk import errors
from connectors.sdk.assertion import HEADER, AssertionVerifier
from connectors.sdk.call import CallInfo, _call, _runtime
from connectors.sdk.config import ConnectorConfig
from connectors.sdk.database import create_tables, make_engine, reachable
from connectors.sdk.definition import ConnectorDefinition
from connectors.sdk.gateway_keys import GatewayKeys, load_jwks_file
from connectors.sdk.idempotency import IDEMPOTENCY_METADATA
from connectors.sdk.jsonifier import OrjsonJsonifier
from connectors.sdk.operations import decorate_once
from connectors.sdk.registration import register_forever
from connectors.sdk.registry_access import RegistryAccess
from connectors.sdk.runtime import Runtime
from connectors.sdk.tls import live_contexts, peer_refusal
from connectors.sdk.validation import VALIDATOR_MAP, check_connector
from lienthong import pki
from lienthong.background import stop_task
from lienthong.cert_renewal import CertificateRenewer
from lienthong.lifespan import serve_lifespan
from lienthong.problem import PROBLEM_MEDIA_TYPE, Problem
from lienthong.tokens import TokenError

log = logging.getLogger("lienthong.connector")

_HEADER_BYTES = HEADER.encode()
_JSONIFIER = OrjsonJsonifier()
_PUBLIC = {"/healthz", "/readyz", "/openapi.json"}


def _declares_security(spec: dict[str, Any]) -> bool:
    if spec.get("security") or (spec.get("components") or {}).get("securitySchemes"):
        return True
    return any(
        isinstance(op, dict) and op.get("security")
        for item in (spec.get("paths") or {}).values()
        if isinstance(item, dict)
        for op in item.values()
    )


def _middlewares(spec: dict[str, Any]) -> list[Any]:
    """connexion's default stack without the layers a connector never uses, each of which routed every request
    again: Swagger UI (off; /openapi.json is served in front), response validation (off), and security unless the
    document declares some (the gateway assertion is the connector's gate, checked before connexion)."""
    stack: list[Any] = [ServerErrorMiddleware, ExceptionMiddleware, RoutingMiddleware]
    if _declares_security(spec):
        stack.append(SecurityMiddleware)
    return [*stack, RequestValidationMiddleware, LifespanMiddleware, ContextMiddleware]


def _as_json(handler: Any) -> Any:
    """Name the media type of a handler's answer: the spec also declares problem+json, so connexion cannot guess.

    A plain document (the usual 200) becomes the response here, serialized by orjson in the handler's thread, so
    connexion's content-type inference and serializer stay off the event loop."""

    @functools.wraps(handler)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        result = handler(*args, **kwargs)
        if isinstance(result, dict | list):
            return Response(_JSONIFIER.dumps(result), 200, media_type="application/json")
        if isinstance(result, tuple):
            body, status, *rest = result
            headers = dict(rest[0]) if rest else {}
            headers.setdefault("Content-Type", "application/json")
            return body, status, headers
        return result, 200, {"Content-Type": "application/json"}

    return wrapper


def _handler_resolver(module_name: str) -> Resolver:
    module = importlib.import_module(module_name)

    def resolve(operation_id: str) -> Any:
        try:
            handler = getattr(module, operation_id)
        except AttributeError:
            raise LookupError(f"{module_name} has no handler for operationId {operation_id!r}") from None
        if asyncio.iscoroutinefunction(handler):
            raise TypeError(f"{module_name}.{operation_id}: handlers are plain functions (run in the thread pool)")
        return _as_json(handler)

    return Resolver(function_resolver=resolve)


class ConnectorApp:
    """The ASGI app of one connector; see build_app."""

    def __init__(self, definition: ConnectorDefinition, config: ConnectorConfig) -> None:
        self.definition = definition
        self.config = config
        self.spec = check_connector(definition)  # before anything is opened: a connector that cannot serve stops here
        self._spec_json = orjson.dumps(self.spec)
        registry = None
        if config.registry_url and config.key_path and config.kid:
            registry = RegistryAccess(
                config.registry_url, config.key_path, config.kid, definition.subsystem, ca=config.registry_ca
            )
        static = config.gateway_keys
        if static is None and config.gateway_keys_path is not None:
            static = load_jwks_file(config.gateway_keys_path)
        keys = GatewayKeys(
            config.gateway,
            static=static,
            registry=registry if static is None else None,
            refresh_interval=config.key_refresh_interval,
        )
        engine = make_engine(config.database_url)
        if config.create_schema:
            create_tables(engine, *definition.metadata, IDEMPOTENCY_METADATA)
        self.runtime = Runtime(definition=definition, config=config, engine=engine, keys=keys, registry=registry)
        self.verifier = AssertionVerifier(definition.audience, definition.service_id, keys)
        self._tasks: list[asyncio.Task[None]] = []
        self._renewer: CertificateRenewer | None = None

        app = AsyncApp(
            definition.name,
            specification_dir=str(definition.spec_path.parent),
            middlewares=_middlewares(self.spec),
            jsonifier=_JSONIFIER,
        )
        decorate_once(app)
        app.add_api(
            definition.spec_path.name,
            resolver=_handler_resolver(definition.handlers),
            validator_map=VALIDATOR_MAP,
            swagger_ui_options=SwaggerUIOptions(swagger_ui=False, serve_spec=False),
            strict_validation=True,
            validate_responses=False,
        )
        app.add_error_handler(Problem, errors.on_problem)
        app.add_error_handler(ProblemException, errors.on_connexion_problem)
        app.add_error_handler(HTTPException, errors.on_http_exception)
        app.add_error_handler(Exception, errors.on_unexpected)
        self.connexion = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        if self.config.tls_dir is not None:
            refusal = peer_refusal(scope, self.config.gateway)
            if refusal is not None:
                await _send_problem(send, refusal)
                return
        path = scope["path"]
        if path in _PUBLIC:
            await self._public(path, send)
            return
        token = None
        for name, value in scope["headers"]:
            if name == _HEADER_BYTES:
                token = value.decode("latin-1")
                break
        if token is None:
            await _send_problem(send, Problem(401, "invalid-assertion", "the hosting gateway's assertion is missing"))
            return
        try:
            claims = await self.verifier.verify(token)
        except TokenError as exc:
            await _send_problem(send, Problem(401, "invalid-assertion", f"gateway assertion refused: {exc.reason}"))
            return
        off_target = _off_target(claims, scope)
        if off_target is not None:
            await _send_problem(send, Problem(401, "invalid-assertion", f"gateway assertion refused: {off_target}"))
            return
        call_token = _call.set(CallInfo.from_claims(claims))
        runtime_token = _runtime.set(self.runtime)
        try:
            await self.connexion(scope, receive, send)
        finally:
            _call.reset(call_token)
            _runtime.reset(runtime_token)

    async def _public(self, path: str, send: Send) -> None:
        if path == "/healthz":
            await _send_json(send, 200, b'{"status":"ok"}')
        elif path == "/openapi.json":
            await _send_json(send, 200, self._spec_json)
        else:
            db_ok = await anyio.to_thread.run_sync(reachable, self.runtime.engine)
            keys_ok = self.runtime.keys.loaded
            if db_ok and keys_ok:
                await _send_json(send, 200, b'{"status":"ready"}')
            else:
                why = [w for w, ok in (("database unreachable", db_ok), ("gateway keys not loaded", keys_ok)) if not ok]
                await _send_problem(send, Problem(503, "not-ready", "; ".join(why)))

    async def startup(self) -> None:
        if self.runtime.keys.registry is not None:
            await self.runtime.keys.refresh(force=True)
        if self.runtime.registry is not None and self.config.register:
            self._tasks.append(asyncio.create_task(register_forever(self.runtime, self.spec)))
        if self.config.tls_dir is not None and self.runtime.registry is not None:
            # the subsystem's client key signs the CSR; offline (--gateway-keys only) the operator renews by hand
            self._renewer = CertificateRenewer(
                pki.CertFiles(self.config.tls_dir), pki.identity("subsystem", self.definition.subsystem),
                self.runtime.registry.client.request_certificate, live_contexts(self.config.tls_dir),
            )  # fmt: skip
            self._renewer.start()

    async def shutdown(self) -> None:
        if self._renewer is not None:
            await self._renewer.stop()
        for task in self._tasks:
            await stop_task(task)
        self.runtime.engine.dispose()

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        await serve_lifespan(receive, send, self.startup, self.shutdown, f"connector {self.definition.name}")


def _off_target(claims: dict[str, Any], scope: Scope) -> str | None:
    """Why this request is not the one the assertion was signed for, or None. The hosting gateway names the method
    and the decoded path it authorized (`method`, `path`); a request that reached here otherwise (a path cut at '#',
    decoded twice or rewritten on the way) would run an operation the grant never allowed. An assertion without
    them (a gateway that does not bind the request) is taken as before."""
    method, path = claims.get("method"), claims.get("path")
    if method is None and path is None:
        return None
    routed = scope["path"]
    if method == scope["method"] and (routed == path or routed == scope.get("root_path", "") + str(path)):
        return None
    return f"it was signed for {method} {path}, not for {scope['method']} {routed}"


async def _send_json(send: Send, status: int, body: bytes, media_type: str = "application/json") -> None:
    headers = [(b"content-type", media_type.encode()), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _send_problem(send: Send, problem: Problem) -> None:
    await _send_json(send, problem.status, problem.to_bytes(), PROBLEM_MEDIA_TYPE)


def build_app(definition: ConnectorDefinition, config: ConnectorConfig) -> ConnectorApp:
    """The connector as an ASGI app: serve it with uvicorn or any ASGI server (lifespan on)."""
    return ConnectorApp(definition, config)
