"""Check every path template of a service's OpenAPI document before the registry accepts it (issue 13, Critical 2).

A gateway compiles each template into a route (lienthong.snapshot.template_pattern); nothing the registry accepts
may fail there or match ambiguously. The template grammar is the gateway's own (lienthong.snapshot.template_names:
`/` or `/`-separated segments, each literal RFC 3986 path text or exactly one `{name}`, a name once per path); this
module adds what only a whole document can tell: each name is declared as an `in: path` parameter (directly or
through a local `$ref`) of every operation, and every declared path parameter appears in the template. Two
templated paths that could both match one request path for the same method are refused (a static path beside a
template is fine: it is matched first, as OpenAPI says). Every refusal is a 400 naming the path:
`openapi.paths./x/{id}/{id}`.
"""

from __future__ import annotations

import re
from typing import Any

from lienthong.problem import Problem
from lienthong.snapshot import MAX_TEMPLATE_LENGTH, EntryError, template_names, template_pattern
from registry.openapi_doc import METHODS, RefError, resolve


def _bad(path: str, detail: str) -> Problem:
    return Problem(400, "invalid-path-template", detail, field=f"openapi.paths.{path}")


def segments(path: str) -> list[str | None]:
    """The checked segments of a template: literal text, or None for a parameter."""
    return [None if s.startswith("{") else s for s in path[1:].split("/")] if path != "/" else []


def _names(path: object) -> list[str]:
    """The gateway's own grammar (lienthong.snapshot.template_names): the template's parameter names, or a 400."""
    try:
        return template_names(path)
    except EntryError as exc:
        shown = str(path)
        raise _bad(shown if len(shown) <= MAX_TEMPLATE_LENGTH else shown[:64], str(exc)) from None


def _resolve(doc: dict[str, Any], item: object, path: str) -> object:
    try:
        return resolve(doc, item)
    except RefError as exc:
        raise _bad(path, str(exc)) from None


def _path_parameters(doc: dict[str, Any], params: Any, path: str) -> set[str]:
    if params is None:
        return set()
    if not isinstance(params, list):
        raise _bad(path, "parameters must be a list")
    names = set()
    for raw in params:
        param = _resolve(doc, raw, path)
        if not isinstance(param, dict):
            raise _bad(path, "each parameter must be an object")
        if param.get("in") == "path":
            name = param.get("name")
            if not isinstance(name, str):
                raise _bad(path, "a path parameter needs a name")
            names.add(name)
    return names


def _overlap(a: list[str | None], b: list[str | None]) -> bool:
    """Whether one request path could match both templated paths (of the same length)."""
    return all(x is None or y is None or x == y for x, y in zip(a, b, strict=True))


def check(doc: dict[str, Any]) -> None:
    """Refuse (400 naming the path) any template a gateway could not compile, match ambiguously or bind."""
    paths = doc.get("paths")
    if not isinstance(paths, dict):
        return  # the document checks of registry.openapi_endpoints answer that
    templated: dict[tuple[str, int], list[tuple[str, list[str | None]]]] = {}  # by method and segment count
    for path, item in paths.items():
        names = _names(path)
        item = _resolve(doc, item, str(path))
        if not isinstance(item, dict):
            continue
        shared = _path_parameters(doc, item.get("parameters"), path)
        for method in METHODS:
            op = item.get(method)
            if not isinstance(op, dict):
                continue
            declared = shared | _path_parameters(doc, op.get("parameters"), path)
            missing = [n for n in names if n not in declared]
            if missing:
                raise _bad(
                    path, f"{method.upper()} {path}: {{{missing[0]}}} is not declared as an 'in: path' parameter"
                )
            extra = sorted(declared - set(names))
            if extra:
                raise _bad(path, f"{method.upper()} {path}: path parameter {extra[0]!r} is not in the template")
            if names:
                shape = segments(path)
                same = templated.setdefault((method, len(shape)), [])
                for other, other_shape in same:
                    if _overlap(shape, other_shape):
                        raise _bad(path, f"{method.upper()} {path} and {other} can match the same request path")
                same.append((path, shape))
        try:
            template_pattern(path)
        except re.error as exc:  # the checks above should make this unreachable; never let a gateway find out
            raise _bad(path, f"path {path!r} does not compile as a route: {exc}") from exc
