"""The registry's ASGI app: connexion 3 built from openapi/registry.yaml under /v1, with every error answered as
problem+json naming the field, /healthz, and the runtime (Redis, store, snapshot builder, version watch)."""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import connexion
import orjson
from connexion.exceptions import BadRequestProblem, ProblemException
from connexion.lifecycle import ConnexionRequest, ConnexionResponse
from connexion.validators import VALIDATOR_MAP, JSONRequestBodyValidator, ParameterValidator
from jsonschema import ValidationError
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from lienthong.problem import PROBLEM_MEDIA_TYPE, Problem
from lienthong.redis_connection import async_client
from registry import keyfiles, runtime
from registry.snapshot_builder import SnapshotBuilder
from registry.store import Store, Tx
from registry.version_watch import VersionWatch

log = logging.getLogger("lienthong.registry")

SPEC = Path(__file__).resolve().parent.parent / "openapi" / "registry.yaml"
MAX_BODY_BYTES = 1024 * 1024

_PARAM_IN_DETAIL = re.compile(r"parameter '([^']+)'")
_REQUIRED = re.compile(r"^'([^']+)' is a required property")


def _field_of(exc: ValidationError) -> str:
    path = [str(p) for p in exc.absolute_path]
    if exc.validator == "required":
        m = _REQUIRED.match(exc.message)
        if m:
            path.append(m.group(1))
    elif exc.validator == "additionalProperties":
        m = re.search(r"\('([^']+)'", exc.message)
        if m:
            path.append(m.group(1))
    return ".".join(path) or "body"


class FieldBodyValidator(JSONRequestBodyValidator):
    """Connexion's JSON body validator, but its errors name the field (protocol §6)."""

    async def _parse(self, stream: Any, scope: Any) -> Any:
        chunks, size = [], 0
        async for chunk in stream:
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                raise Problem(413, "body-too-large", f"the body is over {MAX_BODY_BYTES} bytes", field="body")
            chunks.append(chunk)
        raw = b"".join(chunks)
        if not raw:
            return None
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise Problem(400, "invalid-body", f"the body is not JSON: {exc}", field="body") from exc

    def _validate(self, body: Any) -> dict[str, Any] | None:
        if not self._nullable and body is None:
            raise Problem(400, "invalid-body", "a JSON body is required", field="body")
        try:
            self._validator.validate(body)
        except ValidationError as exc:
            raise Problem(400, "invalid-body", exc.message[:500], field=_field_of(exc)) from exc
        return None


class FieldParameterValidator(ParameterValidator):
    """Connexion's parameter validator, but its errors name the parameter."""

    def validate_request(self, request: Any) -> None:
        if self.strict_validation:
            extra = self.validate_query_parameter_list(request, security_params=self.security_query_params)
            if extra:
                name = sorted(extra)[0]
                raise Problem(400, "invalid-parameter", f"unknown query parameter {name!r}", field=name)
        for where in ("query", "path", "header", "cookie"):
            check = getattr(self, f"validate_{where}_parameter")
            for param in self.parameters.get(where, []):
                error = check(param, request)
                if error:
                    raise Problem(400, "invalid-parameter", str(error).split("\n")[0][:300], field=param["name"])


def _problem_response(problem: Problem, instance: str | None = None) -> ConnexionResponse:
    return ConnexionResponse(
        status_code=problem.status,
        mimetype=PROBLEM_MEDIA_TYPE,
        content_type=PROBLEM_MEDIA_TYPE,
        body=problem.to_bytes(instance),
        headers=problem.headers,
    )


def on_problem(request: ConnexionRequest, exc: Exception) -> ConnexionResponse:
    assert isinstance(exc, Problem)
    return _problem_response(exc, request.url.path)


def on_connexion_problem(request: ConnexionRequest, exc: Exception) -> ConnexionResponse:
    assert isinstance(exc, ProblemException)
    detail = str(exc.detail or exc.title or "")
    status = int(exc.status or 500)
    field = None
    if isinstance(exc, BadRequestProblem):
        m = _PARAM_IN_DETAIL.search(detail)
        field = m.group(1) if m else "body"
    codes = {400: "invalid-parameter", 401: "invalid-token", 403: "access-denied", 404: "not-found"}
    code = codes.get(status, {405: "method-not-allowed", 406: "not-acceptable", 415: "unsupported-media-type"}.get(
        status, "error"))  # fmt: skip
    return _problem_response(Problem(status, code, detail, field=field), request.url.path)


def on_http_exception(request: ConnexionRequest, exc: Exception) -> ConnexionResponse:
    assert isinstance(exc, HTTPException)
    code = {404: "not-found", 405: "method-not-allowed"}.get(exc.status_code, "error")
    detail = "no such resource" if exc.status_code == 404 else str(exc.detail)
    return _problem_response(Problem(exc.status_code, code, detail, headers=dict(exc.headers or {})), request.url.path)


def on_redis_error(request: ConnexionRequest, exc: Exception) -> ConnexionResponse:
    log.warning("redis unavailable: %s", exc)
    problem = Problem(503, "storage-unavailable", "the registry's storage is unavailable", headers={"Retry-After": "1"})
    return _problem_response(problem, request.url.path)


def on_unexpected(request: ConnexionRequest, exc: Exception) -> ConnexionResponse:
    log.error("unexpected error on %s", request.url.path, exc_info=exc)
    return _problem_response(Problem(500, "internal-error", "the registry failed; see its log"), request.url.path)


async def ensure_admin_keys(store: Store, data_dir: Path) -> None:
    """Register the admin public keys kept in the data dir (written by init), once each."""
    for jwk in keyfiles.admin_public_jwks(data_dir):
        kid = jwk["kid"]

        async def change(tx: Tx, jwk: dict[str, Any] = jwk, kid: str = kid) -> None:
            if await tx.get("admins", kid) is not None:
                return
            tx.put("admins", kid, None, {"kid": kid, "jwk": jwk, "revoked": False}, "admins.create")
            tx.index_kid(kid, "admin", kid)

        await store.change("system:init", change)


def create_app(data_dir: str | Path, redis_url: str) -> connexion.AsyncApp:
    data = Path(data_dir)
    signing, kid = keyfiles.signing_key(data)

    @contextlib.asynccontextmanager
    async def lifespan(_app: Any) -> AsyncIterator[None]:
        redis = async_client(redis_url)
        store = Store(redis)
        watch = VersionWatch(redis)
        rt = runtime.Runtime(redis, store, SnapshotBuilder(redis, signing, kid), watch, data)
        await ensure_admin_keys(store, data)
        watch.start()
        runtime.install(rt)
        try:
            yield
        finally:
            runtime.install(None)
            await watch.stop()
            await redis.aclose()

    validators = {**VALIDATOR_MAP, "parameter": FieldParameterValidator}
    validators["body"] = type(VALIDATOR_MAP["body"])({"*/*json": FieldBodyValidator})
    app = connexion.AsyncApp(__name__, lifespan=lifespan, validator_map=validators, strict_validation=True)
    app.add_api(SPEC, base_path="/v1", swagger_ui_options=connexion.options.SwaggerUIOptions(swagger_ui_path="/ui"))
    app.add_url_rule("/healthz", "healthz", healthz, methods=["GET"])
    app.add_error_handler(Problem, on_problem)
    app.add_error_handler(ProblemException, on_connexion_problem)
    app.add_error_handler(HTTPException, on_http_exception)
    app.add_error_handler(RedisError, on_redis_error)
    app.add_error_handler(Exception, on_unexpected)
    return app


async def healthz(_request: Request) -> Response:
    try:
        await runtime.current().redis.ping()
    except (RedisError, OSError, RuntimeError):
        return JSONResponse({"status": "unavailable", "redis": False}, status_code=503)
    return JSONResponse({"status": "ok", "redis": True})
