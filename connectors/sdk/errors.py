"""Every error a connector answers is application/problem+json with a stable code (protocol §6), including the ones
connexion and starlette raise themselves (validation, unknown route, wrong method or media type)."""

from __future__ import annotations

import logging
from typing import Any

from connexion.exceptions import ProblemException
from connexion.lifecycle import ConnexionRequest, ConnexionResponse
from starlette.exceptions import HTTPException

from lienthong.problem import PROBLEM_MEDIA_TYPE, Problem

log = logging.getLogger("lienthong.connector")

_CODES = {
    400: "invalid-parameter",
    401: "invalid-assertion",
    403: "not-permitted",
    404: "unknown-endpoint",
    405: "method-not-allowed",
    406: "not-acceptable",
    409: "conflict",
    413: "body-too-large",
    415: "unsupported-media-type",
}


def problem_response(problem: Problem) -> ConnexionResponse:
    return ConnexionResponse(
        status_code=problem.status,
        mimetype=PROBLEM_MEDIA_TYPE,
        content_type=PROBLEM_MEDIA_TYPE,
        body=problem.to_bytes(),
        headers=problem.headers,
    )


def _from_status(status: int, detail: Any) -> Problem:
    text = str(detail) if detail else "request refused"
    if status == 400:
        # connexion's own 400s (missing body, bad form) concern the body; the naming validators handle parameters
        return Problem(400, "invalid-body", text, field="body")
    return Problem(status, _CODES.get(status, "error"), text)


def on_problem(_request: ConnexionRequest, exc: Exception) -> ConnexionResponse:
    assert isinstance(exc, Problem)
    return problem_response(exc)


def on_connexion_problem(_request: ConnexionRequest, exc: Exception) -> ConnexionResponse:
    assert isinstance(exc, ProblemException)
    return problem_response(_from_status(exc.status, exc.detail))


def on_http_exception(_request: ConnexionRequest, exc: Exception) -> ConnexionResponse:
    assert isinstance(exc, HTTPException)
    return problem_response(_from_status(exc.status_code, exc.detail))


def on_unexpected(_request: ConnexionRequest, exc: Exception) -> ConnexionResponse:
    log.error("unhandled error in a connector handler: %s", type(exc).__name__, exc_info=exc)
    return problem_response(Problem(500, "internal-error", "the connector failed to answer"))
