"""Check every path template of a service's OpenAPI document before the registry accepts it (issue 13, Critical 2).

A gateway compiles each template into a route (lienthong.snapshot.template_pattern); nothing the registry accepts
may fail there or match ambiguously. A template is `/` or `/`-separated segments, each either literal text of
RFC 3986 path characters (no `%`, never `.`, `..` or empty) or exactly `{name}` with an identifier; a name appears
once per path and is declared as an `in: path` parameter (directly or through a local `$ref`) of every operation,
and every declared path parameter appears in the template. Two templated paths that could both match one request
path for the same method are refused (a static path beside a template is fine: it is matched first, as OpenAPI
says). Every refusal is a 400 naming the path: `openapi.paths./x/{id}/{id}`.
"""

from __future__ import annotations

import re
from typing import Any

from lienthong.problem import Problem
from lienthong.snapshot import template_pattern

METHODS = ("get", "put", "post", "delete", "patch", "head", "options", "trace")
NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
PARAM_SEGMENT = re.compile(r"^\{([^{}]*)\}$")
LITERAL = re.compile(r"^[A-Za-z0-9._~!$&'()*+,;=:@-]+$")
MAX_REF_DEPTH = 16
MAX_PATH_LENGTH = 1024


def _bad(path: str, detail: str) -> Problem:
    return Problem(400, "invalid-path-template", detail, field=f"openapi.paths.{path}")


def segments(path: str) -> list[str | None]:
    """The checked segments of a template: literal text, or None for a parameter."""
    return [None if s.startswith("{") else s for s in path[1:].split("/")] if path != "/" else []


def _names(path: object) -> list[str]:
    """Check one template's syntax; return its parameter names in order."""
    if not isinstance(path, str):
        raise _bad(str(path), f"path {path!r} must be a string")
    if not path.startswith("/"):
        raise _bad(path, f"path {path!r} must start with '/'")
    if len(path) > MAX_PATH_LENGTH:
        raise _bad(path[:64], f"path is longer than {MAX_PATH_LENGTH} characters")
    if path == "/":
        return []
    names: list[str] = []
    for segment in path[1:].split("/"):
        param = PARAM_SEGMENT.match(segment)
        if param is not None:
            name = param.group(1)
            if not NAME.match(name):
                raise _bad(path, f"parameter {{{name}}} in {path!r} is not an identifier ([A-Za-z_][A-Za-z0-9_]*)")
            if name in names:
                raise _bad(path, f"parameter {{{name}}} appears twice in {path!r}")
            names.append(name)
        elif segment in ("", ".", ".."):
            raise _bad(path, f"path {path!r} has an empty, '.' or '..' segment")
        elif not LITERAL.match(segment):
            raise _bad(
                path, f"segment {segment!r} of {path!r} is neither literal path text (no '%', '{{', '}}', "
                      "spaces or non-ASCII) nor exactly one {name}",
            )  # fmt: skip
    return names


def _resolve(doc: dict[str, Any], item: Any, path: str) -> Any:
    """Follow local `$ref`s (`#/a/b`, RFC 6901 escapes) to the object they name."""
    for _ in range(MAX_REF_DEPTH):
        if not isinstance(item, dict) or "$ref" not in item:
            return item
        ref = item["$ref"]
        if not isinstance(ref, str) or not ref.startswith("#/"):
            raise _bad(path, f"$ref {ref!r} is not a local reference (#/components/...)")
        target: Any = doc
        for token in ref[2:].split("/"):
            token = token.replace("~1", "/").replace("~0", "~")
            if not isinstance(target, dict) or token not in target:
                raise _bad(path, f"$ref {ref!r} names nothing in the document")
            target = target[token]
        item = target
    raise _bad(path, f"$refs nest deeper than {MAX_REF_DEPTH} (a cycle?)")


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
