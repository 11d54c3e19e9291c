"""Derive a service's endpoints (method + path template) from its OpenAPI 3 document, as X-Road does for REST."""

from __future__ import annotations

from typing import Any

import orjson

from lienthong import subjects
from lienthong.problem import Problem
from lienthong.snapshot import template_names
from lienthong.snapshot_entries import no_data_statuses
from registry.openapi_doc import METHODS, RefError, resolve

SUBJECT_EXTENSION = "x-lienthong-subject"  # on a parameter or a request-body schema property: it holds a subject
SUBJECTS_EXTENSION = "x-lienthong-subjects"  # on an operation: [{in: path|query|header, name}, {in: body, pointer}]
BATCH_EXTENSION = "x-lienthong-batch"  # on an operation: {items: /pointer/to/the/array} (quota and meter count items)
# on an operation or the document root (the operation's wins): the provider's statuses that mean "no data", an answer
# rather than an error (policies.outcome)
NO_DATA_EXTENSION = "x-lienthong-no-data"
MAX_SCHEMA_NODES = 2000  # schema objects visited per request body when looking for subject properties


def _bad(field: str, detail: str) -> Problem:
    return Problem(400, "invalid-body", detail, field=field)


def _resolve(doc: dict[str, Any], node: object, field: str) -> object:
    """Follow local `$ref`s ('#/components/...'); one that cannot be resolved is a 400 naming `field`."""
    try:
        return resolve(doc, node)
    except RefError as exc:
        raise _bad(field, str(exc)) from None


def _param_subjects(doc: dict[str, Any], field: str, *lists: object) -> list[dict[str, str]]:
    """Parameters marked `x-lienthong-subject: true`, `$ref`s resolved; an operation's own parameter overrides the
    path item's of the same name and place (OpenAPI's rule)."""
    found: dict[tuple[str, str], bool] = {}
    for params in reversed(lists):  # path item first, the operation's own last, so they win
        if not isinstance(params, list):
            continue
        for i, raw in enumerate(params):
            p = _resolve(doc, raw, f"{field}.parameters.{i}")
            if not isinstance(p, dict) or not isinstance(p.get("name"), str) or not isinstance(p.get("in"), str):
                continue
            found[(p["in"], p["name"])] = p.get(SUBJECT_EXTENSION) is True
    out = []
    for (place, name), marked in found.items():
        if not marked:
            continue
        if place not in subjects.PARAM_PLACES:
            raise _bad(field, f"subject parameter {name!r} is in {place!r}; subjects sit in path, query or header")
        out.append({"in": place, "name": name})
    return out


def _body_schema_subjects(doc: dict[str, Any], op: dict[str, Any], field: str) -> list[dict[str, str]]:
    """Request-body schema properties marked `x-lienthong-subject: true`, as pointers (arrays become `*`)."""
    body = _resolve(doc, op.get("requestBody"), f"{field}.requestBody")
    if not isinstance(body, dict) or not isinstance(body.get("content"), dict):
        return []
    pointers: dict[str, None] = {}
    budget = [MAX_SCHEMA_NODES]

    def visit(schema: object, at: subjects.Pointer, refs: tuple[str, ...]) -> None:
        budget[0] -= 1
        if budget[0] < 0:
            raise _bad(f"{field}.requestBody", f"the request body schema has more than {MAX_SCHEMA_NODES} parts")
        if isinstance(schema, dict) and isinstance(schema.get("$ref"), str):
            if schema["$ref"] in refs:
                return  # a recursive schema: its subjects were found on the first pass
            refs = (*refs, schema["$ref"])
        node = _resolve(doc, schema, f"{field}.requestBody")
        if not isinstance(node, dict) or len(at) > subjects.MAX_POINTER_SEGMENTS:
            return
        if node.get(SUBJECT_EXTENSION) is True and at:
            is_array = node.get("type") == "array"
            pointers[subjects.format_pointer((*at, subjects.WILDCARD) if is_array else at)] = None
        for key in ("allOf", "anyOf", "oneOf"):
            if isinstance(node.get(key), list):
                for sub in node[key]:
                    visit(sub, at, refs)
        if isinstance(node.get("properties"), dict):
            for name, sub in node["properties"].items():
                visit(sub, (*at, str(name)), refs)
        if "items" in node:
            visit(node["items"], (*at, subjects.WILDCARD), refs)

    for media, content in body["content"].items():
        if isinstance(media, str) and "json" in media and isinstance(content, dict) and "schema" in content:
            visit(content["schema"], (), ())
    return [{"in": "body", "pointer": p} for p in pointers]


def _declared(doc: dict[str, Any], path: str, method: str, op: dict[str, Any], item: dict[str, Any]
              ) -> tuple[list[dict[str, str]], dict[str, str] | None]:  # fmt: skip
    """The endpoint's subject locations and batch declaration, checked with the gateway's own parser."""
    field = f"openapi.paths.{path}.{method}"
    located = _param_subjects(doc, field, op.get("parameters"), item.get("parameters"))
    located += _body_schema_subjects(doc, op, field)
    explicit = op.get(SUBJECTS_EXTENSION)
    if explicit is not None:
        if not isinstance(explicit, list):
            raise _bad(f"{field}.{SUBJECTS_EXTENSION}", "must be a list of {in, name} or {in: body, pointer}")
        for i, loc in enumerate(explicit):
            if not isinstance(loc, dict):
                raise _bad(f"{field}.{SUBJECTS_EXTENSION}.{i}", "a subject location must be an object")
            located.append({k: v for k, v in loc.items() if k in ("in", "name", "pointer")})
    unique = list({orjson.dumps(loc, option=orjson.OPT_SORT_KEYS): loc for loc in located}.values())
    batch = op.get(BATCH_EXTENSION)
    if batch is not None:
        batch = {k: v for k, v in batch.items() if k == "items"} if isinstance(batch, dict) else batch
    try:
        spec = subjects.parse_declaration({"path": path, "subjects": unique, "batch": batch})
    except ValueError as exc:
        raise _bad(field, f"{path} {method.upper()}: {exc}") from None
    names = set(template_names(path))
    for place, name in spec.params if spec is not None else ():
        if place == "path" and name not in names:
            raise _bad(field, f"subject path parameter {name!r} is not in the template {path}")
    return unique, batch


def _no_data(declared: object, field: str) -> list[int]:
    """An `x-lienthong-no-data` value, checked by the gateways' own rule; 400 naming `field` when it fails."""
    try:
        if declared is None:  # the snapshot's "none declared"; in a document, a mistake
            raise ValueError
        return sorted(no_data_statuses(declared))
    except ValueError:
        raise _bad(field, "must be a list of HTTP statuses 400-499 that mean no data, e.g. [404]") from None


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
    """Every method + path of the document; endpoints that existed before keep their enabled flag.

    Its path templates were checked first (registry.path_templates.check, at registration and every update).
    """
    checked = check_document(doc)
    kept = {(e["method"], e["path"]): bool(e.get("enabled", True)) for e in previous or []}
    default_no_data = _no_data(checked.get(NO_DATA_EXTENSION, []), f"openapi.{NO_DATA_EXTENSION}")
    endpoints: list[dict[str, Any]] = []
    for path, item in checked["paths"].items():
        if not isinstance(item, dict):
            raise _bad("openapi.paths", f"path item {path!r} must be an object")
        for method in METHODS:
            op = item.get(method)
            if op is None:
                continue
            if not isinstance(op, dict):
                raise _bad("openapi.paths", f"operation {method.upper()} {path} must be an object")
            key = (method.upper(), path)
            located, batch = _declared(checked, path, method, op, item)
            field = f"openapi.paths.{path}.{method}.{NO_DATA_EXTENSION}"
            no_data = _no_data(op[NO_DATA_EXTENSION], field) if NO_DATA_EXTENSION in op else default_no_data
            # the first path or query subject, for readers of the older single-parameter field
            first = next((loc["name"] for loc in located if loc["in"] in ("path", "query")), None)
            endpoints.append(
                {
                    "method": key[0],
                    "path": path,
                    "operation_id": op.get("operationId") if isinstance(op.get("operationId"), str) else None,
                    "summary": op.get("summary") if isinstance(op.get("summary"), str) else None,
                    "enabled": kept.get(key, True),
                    "subject_param": first,
                    "subjects": located,
                    "batch": batch,
                    "no_data": no_data,
                }
            )
    if not endpoints:
        raise _bad("openapi.paths", "the OpenAPI document defines no operation")
    return endpoints
