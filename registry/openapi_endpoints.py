"""Derive a service's endpoints (method + path template) from its OpenAPI 3 document, as X-Road does for REST."""

from __future__ import annotations

import re
from typing import Any

from lienthong.problem import Problem

METHODS = ("get", "put", "post", "delete", "patch", "head", "options", "trace")
SUBJECT_EXTENSION = "x-lienthong-subject"

# A template segment is either literal text or one {param}; '..', '.', and empty segments would let a call
# escape its endpoint after percent-decoding (protocol §2), so they are refused at registration already.
_SEGMENT = re.compile(r"^(?:[A-Za-z0-9._~!$&'()*+,;=:@-]+|\{[A-Za-z_][A-Za-z0-9_]*\})$")


def _bad(field: str, detail: str) -> Problem:
    return Problem(400, "invalid-body", detail, field=field)


def _check_path(path: object) -> str:
    if not isinstance(path, str) or not path.startswith("/"):
        raise _bad("openapi.paths", f"path {path!r} must start with '/'")
    if path == "/":
        return path
    for segment in path[1:].split("/"):
        if segment in ("", ".", "..") or not _SEGMENT.match(segment):
            raise _bad("openapi.paths", f"path {path!r} has an invalid segment {segment!r}")
    return path


def _subject_param(*parameter_lists: object) -> str | None:
    for params in parameter_lists:
        if not isinstance(params, list):
            continue
        for p in params:
            if isinstance(p, dict) and p.get(SUBJECT_EXTENSION) is True and isinstance(p.get("name"), str):
                return str(p["name"])
    return None


def check_document(doc: object) -> dict[str, Any]:
    """The document must be an OpenAPI 3 object with at least one path; return it unchanged."""
    if not isinstance(doc, dict):
        raise _bad("openapi", "the OpenAPI document must be a JSON object")
    version = doc.get("openapi")
    if not isinstance(version, str) or not version.startswith("3."):
        raise _bad("openapi.openapi", "only OpenAPI 3.x documents are accepted")
    paths = doc.get("paths")
    if not isinstance(paths, dict) or not paths:
        raise _bad("openapi.paths", "the OpenAPI document needs at least one path")
    return doc


def derive(doc: object, previous: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Every method + path of the document; endpoints that existed before keep their enabled flag."""
    checked = check_document(doc)
    kept = {(e["method"], e["path"]): bool(e.get("enabled", True)) for e in previous or []}
    endpoints: list[dict[str, Any]] = []
    for path, item in checked["paths"].items():
        _check_path(path)
        if not isinstance(item, dict):
            raise _bad("openapi.paths", f"path item {path!r} must be an object")
        for method in METHODS:
            op = item.get(method)
            if op is None:
                continue
            if not isinstance(op, dict):
                raise _bad("openapi.paths", f"operation {method.upper()} {path} must be an object")
            key = (method.upper(), path)
            endpoints.append(
                {
                    "method": key[0],
                    "path": path,
                    "operation_id": op.get("operationId") if isinstance(op.get("operationId"), str) else None,
                    "summary": op.get("summary") if isinstance(op.get("summary"), str) else None,
                    "enabled": kept.get(key, True),
                    "subject_param": _subject_param(op.get("parameters"), item.get("parameters")),
                }
            )
    if not endpoints:
        raise _bad("openapi.paths", "the OpenAPI document defines no operation")
    return endpoints
