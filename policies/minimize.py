"""minimize (priority 400, response phase): where the data leaves (provider or local role), cut the JSON response to
the dotted field paths the grant allows, through nested objects and arrays of objects. Fails closed: a body that
cannot be cut (not JSON while the grant limits fields) is replaced by a 502 problem, never passed through.
"""

from __future__ import annotations

from typing import Any

import orjson

from lienthong.problem import Problem
from policies.base import CallContext, PolicyBase
from policies.chain import ChainConfig

# A problem body from the provider keeps only RFC 9457's own members; anything else could carry data.
PROBLEM_MEMBERS = frozenset({"type", "title", "status", "detail", "code", "field", "instance"})

FieldTree = dict[str, "FieldTree | None"]  # None: the whole value under this name is allowed


def field_tree(paths: tuple[str, ...] | list[str]) -> FieldTree:
    """["id", "household.id", "household"] -> {"id": None, "household": None}; a shorter path wins."""
    tree: FieldTree = {}
    for path in sorted(paths, key=lambda p: p.count(".")):
        node: FieldTree | None = tree
        parts = path.split(".")
        for i, part in enumerate(parts):
            assert node is not None
            if part in node and node[part] is None:
                break  # an ancestor already allows everything below
            if i == len(parts) - 1:
                node[part] = None
            else:
                child = node.get(part)
                if child is None:
                    child = {}
                    node[part] = child
                node = child
    return tree


def strip(value: Any, tree: FieldTree) -> Any:
    """Keep only what tree allows. Lists are cut element by element; a scalar where the grant names sub-fields has
    no such fields and is dropped (not even its null or its presence in a list leaks)."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, sub in tree.items():
            if key in value:
                item = value[key]
                if sub is None:
                    out[key] = item
                elif isinstance(item, dict | list):
                    out[key] = strip(item, sub)
        return out
    if isinstance(value, list):
        return [strip(item, tree) for item in value if isinstance(item, dict | list)]
    return None


class Minimize(PolicyBase):
    name = "minimize"
    priority = 400

    def __init__(self) -> None:
        self._trees: dict[tuple[str, ...], FieldTree] = {}

    def response(self, ctx: CallContext) -> None:
        grant = ctx.grant
        if ctx.role == "home" or grant is None or grant.fields is None or not ctx.response_body:
            return
        tree = self._trees.get(grant.fields)
        if tree is None:
            tree = self._trees[grant.fields] = field_tree(grant.fields)
        content_type = _header(ctx.response_headers, "content-type").lower()
        try:
            doc = orjson.loads(ctx.response_body)
        except orjson.JSONDecodeError:
            # the router answers this (and drops the provider's headers)
            raise Problem(502, "upstream-failed", "the provider's response is not JSON, so it cannot be limited to "
                          "the granted fields") from None  # fmt: skip
        if "problem+json" in content_type and isinstance(doc, dict):
            cut: Any = {k: v for k, v in doc.items() if k in PROBLEM_MEMBERS and not isinstance(v, dict | list)}
        else:
            cut = strip(doc, tree)
        ctx.response_body = orjson.dumps(cut)
        _drop_header(ctx.response_headers, "content-length")


def _header(headers: list[tuple[str, str]], name: str) -> str:
    return next((value for key, value in headers if key.lower() == name), "")


def _drop_header(headers: list[tuple[str, str]], name: str) -> None:
    headers[:] = [(key, value) for key, value in headers if key.lower() != name]


def build(cfg: ChainConfig) -> Minimize:
    del cfg
    return Minimize()
