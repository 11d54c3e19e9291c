"""Where a call's data subjects (personal IDs) sit, and how many items a batch call carries: the grammar of the
declarations, parsed once per endpoint, and the extraction of the values from one request.

An endpoint's declaration travels in the snapshot as the registry derived it from the service's OpenAPI document
(registry/openapi_endpoints.py):

    "subjects": [{"in": "path", "name": "id"}, {"in": "query", "name": "pid"}, {"in": "header", "name": "x-pid"},
                 {"in": "body", "pointer": "/ids/*"}, {"in": "response", "pointer": "/members/*/id"}],
    "batch": {"items": "/ids"}

A body or response pointer is a JSON Pointer (RFC 6901, `~0` and `~1` escapes) in which the segment `*` stands for
every item of an array. Request locations are read before the call (an unreadable one refuses it); response
locations are read from the answer the gateway passes on (after minimization: only what was disclosed), never
refusing anything. The registry and the gateway both parse with `parse_declaration`, so a declaration the
registry accepted is one the gateway reads the same way.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import orjson

from lienthong.problem import Problem

PARAM_PLACES = ("path", "query", "header")
MAX_POINTER_SEGMENTS = 16
MAX_LOCATIONS = 32  # declared locations per endpoint
MAX_SUBJECTS = 10_000  # subject values one call may carry; the connectors' own batch limit is 1,000
WILDCARD = "*"

# The key of the subject pseudonyms (HMACs) in audit records: one for the whole mesh, so the same person gets the
# same pseudonym on every gateway (policies/audit.py; docs/policies.md).
SUBJECT_KEY_ENV = "LIENTHONG_SUBJECT_KEY"
# keys the current one replaced (comma-separated hex, newest first): read by the data tracker only, so that records
# made before a rotation stay findable until retention removes them (docs/policies.md, the subject key)
SUBJECT_KEYS_RETIRED_ENV = "LIENTHONG_SUBJECT_KEYS_RETIRED"
MIN_SUBJECT_KEY_BYTES = 16

Pointer = tuple[str, ...]


def subject_key_env(key_file: Path) -> dict[str, str]:
    """For a one-machine mesh (`lienthong up`): the environment that gives every gateway the same subject key, kept
    in `key_file` (made on first use, mode 0600) so pseudonyms survive restarts. An operator's own
    LIENTHONG_SUBJECT_KEY wins (it reaches the gateways as is). A real deployment distributes the key as a secret."""
    if os.environ.get(SUBJECT_KEY_ENV):
        return {}
    if not key_file.exists():
        key_file.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32) + "\n")
    return {SUBJECT_KEY_ENV: key_file.read_text().strip()}


def subject_key_ring(environ: Mapping[str, str] = os.environ) -> list[bytes]:
    """The current subject key, then the retired ones; ValueError naming the variable for a malformed one."""
    ring: list[bytes] = []
    for name in (SUBJECT_KEY_ENV, SUBJECT_KEYS_RETIRED_ENV):
        for text in environ.get(name, "").split(","):
            if not text.strip():
                continue
            try:
                key = bytes.fromhex(text.strip())
            except ValueError:
                raise ValueError(f"{name} must be hex (comma-separated for several keys)") from None
            if len(key) < MIN_SUBJECT_KEY_BYTES:
                raise ValueError(f"{name}: a subject key has at least {MIN_SUBJECT_KEY_BYTES} bytes")
            ring.append(key)
    return ring


def pseudonym(key: bytes, subject: str) -> str:
    """A subject's pseudonym under one key: HMAC-SHA256, hex (the audit's and transaction log's subject_hmacs)."""
    return hmac.new(key, subject.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()


@dataclass(frozen=True, slots=True)
class SubjectSpec:
    """One endpoint's subject locations and batch item path, parsed."""

    params: tuple[tuple[str, str], ...] = ()  # (place, name): path, query or header (lower-case) parameters
    body: tuple[Pointer, ...] = ()
    batch: Pointer | None = None
    response: tuple[Pointer, ...] = ()  # identifiers the answer discloses (household members, a birth's parents)

    @property
    def reads_body(self) -> bool:
        return bool(self.body) or self.batch is not None


def parse_pointer(text: object, *, wildcard: bool = True) -> Pointer:
    """'/ids/*' -> ('ids', '*'); raises ValueError saying what is wrong."""
    if not isinstance(text, str) or not text.startswith("/"):
        raise ValueError(f"pointer {text!r} must be a string starting with '/'")
    raw = text[1:].split("/")
    if len(raw) > MAX_POINTER_SEGMENTS:
        raise ValueError(f"pointer {text!r} has more than {MAX_POINTER_SEGMENTS} segments")
    segments = []
    for part in raw:
        if part == "":
            raise ValueError(f"pointer {text!r} has an empty segment")
        if "~" in part.replace("~0", "").replace("~1", ""):
            raise ValueError(f"pointer {text!r} has a '~' that is not ~0 or ~1")
        if part == WILDCARD and not wildcard:
            raise ValueError(f"pointer {text!r} may not use '*'")
        segments.append(part.replace("~1", "/").replace("~0", "~"))
    return tuple(segments)


def format_pointer(pointer: Pointer) -> str:
    return "".join("/" + (s.replace("~", "~0").replace("/", "~1")) for s in pointer)


def parse_declaration(endpoint: Mapping[str, Any]) -> SubjectSpec | None:
    """The endpoint's `subjects` and `batch` (or, from older snapshots, its `subject_param`); None when it declares
    nothing. Raises ValueError for a malformed declaration."""
    declared = endpoint.get("subjects")
    batch = endpoint.get("batch")
    legacy = endpoint.get("subject_param")
    if declared is None and batch is None:
        if not legacy:
            return None
        # an older snapshot: the subject parameter is in the path when the template names it, else in the query
        place = "path" if "{" + str(legacy) + "}" in str(endpoint.get("path", "")) else "query"
        return SubjectSpec(params=((place, str(legacy)),))
    if declared is None:
        declared = []
    if not isinstance(declared, list) or len(declared) > MAX_LOCATIONS:
        raise ValueError(f"subjects must be a list of at most {MAX_LOCATIONS} locations")
    params: list[tuple[str, str]] = []
    body: list[Pointer] = []
    response: list[Pointer] = []
    for i, loc in enumerate(declared):
        if not isinstance(loc, Mapping):
            raise ValueError(f"subjects[{i}] must be an object")
        where = loc.get("in")
        if where == "body":
            body.append(parse_pointer(loc.get("pointer")))
        elif where == "response":
            response.append(parse_pointer(loc.get("pointer")))
        elif where in PARAM_PLACES:
            name = loc.get("name")
            if not isinstance(name, str) or not name or len(name) > 128:
                raise ValueError(f"subjects[{i}].name must be a parameter name")
            params.append((str(where), name.lower() if where == "header" else name))
        else:
            raise ValueError(f"subjects[{i}].in must be one of path, query, header, body, response; got {where!r}")
    items: Pointer | None = None
    if batch is not None:
        if not isinstance(batch, Mapping):
            raise ValueError("batch must be an object {items: <pointer to the array>}")
        items = parse_pointer(batch.get("items"), wildcard=False)
    if not params and not body and not response and items is None:
        return None
    return SubjectSpec(tuple(dict.fromkeys(params)), tuple(dict.fromkeys(body)), items, tuple(dict.fromkeys(response)))


# -- one request -------------------------------------------------------------------------------------------------


def _field(pointer: Pointer) -> str:
    """The problem's `field`: the dotted path clients see elsewhere (`ids.3`, `person.id`)."""
    return ".".join(pointer) or "body"


def _bad_body(pointer: Pointer, detail: str) -> Problem:
    return Problem(400, "invalid-body", detail, field=_field(pointer))


def _walk(node: Any, pointer: Pointer, depth: int, at: Pointer) -> Iterator[tuple[Pointer, Any]]:
    """Every (concrete path, value) the pointer reaches; a missing member is no value (an optional field)."""
    if depth == len(pointer):
        yield at, node
        return
    segment = pointer[depth]
    if segment == WILDCARD:
        if node is None:
            return
        if not isinstance(node, list):
            raise _bad_body(at, f"{_field(at)} must be an array")
        for i, item in enumerate(node):
            yield from _walk(item, pointer, depth + 1, (*at, str(i)))
        return
    if isinstance(node, dict):
        if segment in node:
            yield from _walk(node[segment], pointer, depth + 1, (*at, segment))
    elif isinstance(node, list) and segment.isdigit():
        index = int(segment)
        if index < len(node):
            yield from _walk(node[index], pointer, depth + 1, (*at, segment))
    elif node is not None:
        raise _bad_body(at, f"{_field(at)} must be an object")


def _identifier(path: Pointer, value: Any) -> str | None:
    if value is None:
        return None  # an optional subject left empty
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise _bad_body(path, f"{_field(path)} must be a string identifier")


def parse_body(body: bytes) -> Any:
    """The request body as JSON, or a 400 naming the body."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        raise Problem(400, "invalid-body", "the request body is not valid JSON", field="body") from None


def body_subjects(doc: Any, pointers: tuple[Pointer, ...], out: dict[str, None]) -> None:
    """Add every identifier at the pointers to `out` (insertion-ordered, no repeats); bounded by MAX_SUBJECTS."""
    for pointer in pointers:
        for path, value in _walk(doc, pointer, 0, ()):
            ident = _identifier(path, value)
            if ident is not None:
                out[ident] = None
                if len(out) > MAX_SUBJECTS:
                    raise Problem(413, "too-many-subjects",
                                  f"a call may carry at most {MAX_SUBJECTS} subject identifiers",
                                  field=_field(pointer))  # fmt: skip


def batch_items(doc: Any, pointer: Pointer) -> int:
    """The number of items of the batch array (at least 1: a call is one unit even when its array is absent)."""
    node = doc
    for depth, segment in enumerate(pointer):
        if isinstance(node, dict) and segment in node:
            node = node[segment]
        elif isinstance(node, dict) or node is None:
            return 1
        else:
            raise _bad_body(pointer[:depth], f"{_field(pointer[:depth])} must be an object")
    if node is None:
        return 1
    if not isinstance(node, list):
        raise _bad_body(pointer, f"{_field(pointer)} must be an array")
    return max(1, len(node))


def extract(
    spec: SubjectSpec, path_params: Mapping[str, str], query: bytes, headers: Mapping[str, str], body: bytes
) -> tuple[list[str], int]:
    """Every subject identifier of one request (first-seen order, no repeats) and its item count.

    Raises Problem (400 naming the field, 413 over MAX_SUBJECTS) when a declared location cannot be read."""
    found: dict[str, None] = {}
    query_values: dict[str, list[str]] | None = None
    for place, name in spec.params:
        if place == "path":
            value = path_params.get(name)
            if value:
                found[value] = None
        elif place == "header":
            value = headers.get(name)
            if value:
                found[value] = None
        else:
            if query_values is None:
                query_values = parse_qs(query.decode("latin-1"), keep_blank_values=False) if query else {}
            for value in query_values.get(name, ()):
                found[value] = None
    items = 1
    if spec.reads_body:
        doc = parse_body(body)
        body_subjects(doc, spec.body, found)
        if spec.batch is not None:
            items = batch_items(doc, spec.batch)
    return list(found), items


def response_subjects(spec: SubjectSpec, body: bytes) -> list[str]:
    """The identifiers an answer discloses at the declared response locations; never raises: an answer of another
    shape (a problem, not JSON) discloses what can be read of it, at most MAX_SUBJECTS."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return []
    found: dict[str, None] = {}
    for pointer in spec.response:
        try:
            body_subjects(doc, (pointer,), found)
        except Problem:
            continue  # what this location held before its odd part stays in `found`
    return list(found)[:MAX_SUBJECTS]
