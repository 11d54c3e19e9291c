"""What every reader of a service's OpenAPI document in the registry shares: its operation methods and local `$ref`
resolution (registry/path_templates.py, registry/openapi_endpoints.py, registry/service_rules.py).

`resolve` raises RefError, a plain error with a message; each caller turns it into its own Problem, naming the field
it was reading.
"""

from __future__ import annotations

from typing import Any

METHODS = ("get", "put", "post", "delete", "patch", "head", "options", "trace")  # a path item's operations
MAX_REF_HOPS = 16


class RefError(ValueError):
    """A `$ref` that is not local, names nothing, or chains beyond MAX_REF_HOPS."""


def resolve(doc: dict[str, Any], node: object) -> object:
    """Follow local `$ref`s (`#/a/b`, RFC 6901 escapes) to the object they name; anything else is `node` itself."""
    for _ in range(MAX_REF_HOPS):
        if not isinstance(node, dict) or "$ref" not in node:
            return node
        ref = node["$ref"]
        if not isinstance(ref, str) or not ref.startswith("#/"):
            raise RefError(f"$ref {ref!r} is not a local reference: only '#/...' references are resolved")
        target: object = doc
        for token in ref[2:].split("/"):
            token = token.replace("~1", "/").replace("~0", "~")
            if not isinstance(target, dict) or token not in target:
                raise RefError(f"$ref {ref!r} names nothing in the document")
            target = target[token]
        node = target
    raise RefError(f"$refs chain longer than {MAX_REF_HOPS} hops (a cycle?)")
