"""Connexion apps of the mesh (registry, gateway operations API) answer every error as RFC 9457 problem+json that
names the field (protocol §6): validators whose errors carry the field, and the error handlers that install them.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import connexion
import orjson
from connexion.exceptions import BadRequestProblem, ProblemException
from connexion.lifecycle import ConnexionRequest, ConnexionResponse
from connexion.validators import VALIDATOR_MAP, JSONRequestBodyValidator, ParameterValidator
from jsonschema import ValidationError
from starlette.exceptions import HTTPException

from lienthong.problem import PROBLEM_MEDIA_TYPE, Problem

log = logging.getLogger("lienthong.api")

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


def problem_response(problem: Problem, instance: str | None = None) -> ConnexionResponse:
    return ConnexionResponse(
        status_code=problem.status,
        mimetype=PROBLEM_MEDIA_TYPE,
        content_type=PROBLEM_MEDIA_TYPE,
        body=problem.to_bytes(instance),
        headers=problem.headers,
    )


def on_problem(request: ConnexionRequest, exc: Exception) -> ConnexionResponse:
    assert isinstance(exc, Problem)
    return problem_response(exc, request.url.path)


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
    return problem_response(Problem(status, code, detail, field=field), request.url.path)


def on_http_exception(request: ConnexionRequest, exc: Exception) -> ConnexionResponse:
    assert isinstance(exc, HTTPException)
    code = {404: "not-found", 405: "method-not-allowed"}.get(exc.status_code, "error")
    detail = "no such resource" if exc.status_code == 404 else str(exc.detail)
    return problem_response(Problem(exc.status_code, code, detail, headers=dict(exc.headers or {})), request.url.path)


def validator_map(*, body: bool = True) -> dict[str, Any]:
    """connexion's validators with ours for parameters (and JSON bodies), so that their errors name the field."""
    validators: dict[str, Any] = {**VALIDATOR_MAP, "parameter": FieldParameterValidator}
    if body:
        validators["body"] = type(VALIDATOR_MAP["body"])({"*/*json": FieldBodyValidator})
    return validators


def add_problem_handlers(app: connexion.AsyncApp, what: str) -> None:
    """Answer our problems, connexion's and starlette's as problem+json; anything unexpected is a logged 500."""

    def on_unexpected(request: ConnexionRequest, exc: Exception) -> ConnexionResponse:
        log.error("unexpected error in the %s on %s", what, request.url.path, exc_info=exc)
        return problem_response(Problem(500, "internal-error", f"the {what} failed; see its log"), request.url.path)

    app.add_error_handler(Problem, on_problem)
    app.add_error_handler(ProblemException, on_connexion_problem)
    app.add_error_handler(HTTPException, on_http_exception)
    app.add_error_handler(Exception, on_unexpected)


