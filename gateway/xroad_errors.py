"""X-Road's error taxonomy and shape for `/r1` refusals (PR-REST 1.0.4 §4.3 "X-Road error header", §4.6).

A refusal by the mesh answers `X-Road-Error: <X-Road type>` and, in the media type the client's `Accept` asks for
(default application/json), X-Road's body `type`/`message`/`detail` plus lienthong's `code`, `title`, `status` and
`field`, at status 400 for `Client.*` and 500 for `Server.*`. A client that names `application/problem+json` gets
RFC 9457 problem details at lienthong's precise status instead (docs/protocol.md §6). Pure: no I/O.
"""

from __future__ import annotations

import functools
import json
import re
from typing import Any
from xml.etree import ElementTree as ET

import orjson

from lienthong.problem import PROBLEM_MEDIA_TYPE, TITLES, Problem

JSON = "application/json"
XML = "application/xml"
TEXT_XML = "text/xml"
DEFAULT_TYPE = "Server.ClientProxy.InternalError"
CLIENT_PROXY = "Server.ClientProxy."
SERVER_PROXY = "Server.ServerProxy."

# lienthong code -> X-Road type, as the gateway the client called answers it (docs/protocol.md §6, second table)
XROAD_TYPES: dict[str, str] = {
    "invalid-parameter": "Client.BadRequest",
    "invalid-path": "Client.BadRequest",
    "invalid-identifier": "Client.BadRequest",
    "body-too-large": "Client.BadRequest",
    "too-many-subjects": "Client.BadRequest",
    "tls-required": "Client.BadRequest",
    "invalid-body": "Client.InvalidBody",
    "invalid-token": "Server.ClientProxy.AuthenticationFailed",  # extension: X-Road has no client tokens
    "invalid-assertion": "Server.ServerProxy.AuthenticationFailed",  # extension
    "client-certificate-required": "Server.ClientProxy.SslAuthenticationFailed",
    "certificate-identity-mismatch": "Server.ClientProxy.SslAuthenticationFailed",
    "certificate-revoked": "Server.ClientProxy.SslAuthenticationFailed",
    "access-denied": "Server.ServerProxy.AccessDenied",
    "unknown-service": "Server.ServerProxy.UnknownService",
    "unknown-endpoint": "Server.ServerProxy.UnknownService",
    "quota-exceeded": "Server.ServerProxy.QuotaExceeded",  # extension
    "busy": "Server.ServerProxy.Busy",  # extension: the hosting gateway's replay check is overloaded, retry
    "snapshot-expired": "Server.ClientProxy.OutdatedGlobalConf",
    "service-quarantined": "Server.ClientProxy.MalformedGlobalConf",
    "upstream-failed": "Server.ServerProxy.ServiceFailed",
    "upstream-refused": "Server.ServerProxy.ServiceFailed",
    "circuit-open": "Server.ServerProxy.ServiceFailed",
    "upstream-timeout": "Server.ServerProxy.NetworkError",
    "internal-error": "Server.ClientProxy.InternalError",
    "inconsistent-response": "Server.ClientProxy.InconsistentResponse",
}

# Members of a relayed problem+json body that are not extras (RFC 9457 ones, lienthong's, and render's own)
_STANDARD = frozenset({"type", "title", "status", "detail", "code", "field", "instance", "xroad_type"})
_CODE = re.compile(r"[a-z]+(?:-[a-z]+)*")
_XROAD_TYPE = re.compile(r"(?:Client|Server\.ClientProxy|Server\.ServerProxy)(?:\.[A-Za-z][A-Za-z0-9]*)+")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_QVALUE = re.compile(r"(?:0(?:\.[0-9]{0,3})?|1(?:\.0{0,3})?)")
# Characters XML 1.0 §2.2 forbids (C0 controls but tab/LF/CR, lone surrogates, U+FFFE/U+FFFF)
_NOT_XML_CHAR = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_XML_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9._-]*")
# Our four representations, in the order a range matching several at once (*/*, application/*) prefers them
_OFFERED = (JSON, XML, TEXT_XML, PROBLEM_MEDIA_TYPE)


def xroad_type(problem: Problem, *, relayed: bool = False) -> str:
    """The X-Road type; `relayed` when the hosting gateway refused, so its own faults are the provider side's."""
    xtype = problem.xroad or XROAD_TYPES.get(problem.code, DEFAULT_TYPE)
    if relayed and xtype.startswith(CLIENT_PROXY):
        return SERVER_PROXY + xtype[len(CLIENT_PROXY) :]
    return xtype


def xroad_status(xtype: str) -> int:
    """PR-REST §4.6: the client's fault (category 3) is 400, X-Road's or the service's (2 and 4) 500."""
    return 400 if xtype.startswith("Client.") else 500


def _matches(media_range: str, offered: str) -> int:
    """How specifically a media range matches an offered type: 2 exactly, 1 by `type/*`, 0 by `*/*`, -1 not."""
    if media_range == offered:
        return 2
    if offered == PROBLEM_MEDIA_TYPE:
        return -1  # only a client that names problem+json gets it
    if media_range == "*/*":
        return 0
    if media_range.endswith("/*") and offered.startswith(media_range[:-1]):
        return 1
    return -1


def _ranges(accept: str) -> list[tuple[str, float]]:
    """The well-formed media ranges of an Accept value with their q; a malformed one is skipped, not fatal."""
    out: list[tuple[str, float]] = []
    for item in accept.split(","):
        media, *params = (part.strip() for part in item.split(";"))
        kind, slash, sub = media.lower().partition("/")
        if not slash or not _TOKEN.fullmatch(kind) or not _TOKEN.fullmatch(sub) or (kind == "*" and sub != "*"):
            continue
        q: float | None = 1.0
        for param in params:
            name, _eq, value = param.partition("=")
            if name.strip().lower() == "q":
                value = value.strip()
                q = float(value) if _QVALUE.fullmatch(value) else None
        if q is not None:
            out.append((f"{kind}/{sub}", q))
    return out


@functools.lru_cache(maxsize=256)
def error_media_type(accept: str) -> str:
    """RFC 9110 §12.5.1 over our four representations: each takes the q of the most specific range that matches
    it; the highest q wins, a tie goes to the range earlier in the header. Nothing acceptable: application/json."""
    ranges = _ranges(accept)
    best: tuple[float, int, int] | None = None  # (q, -position, -preference): max() of these wins
    chosen = JSON
    for preference, offered in enumerate(_OFFERED):
        hits = [(_matches(r, offered), -i, q) for i, (r, q) in enumerate(ranges) if _matches(r, offered) >= 0]
        if not hits:
            continue
        _specificity, position, q = max(hits)  # the most specific range decides; among equals the first
        key = (q, position, -preference)
        if q > 0 and (best is None or key > best):
            best, chosen = key, offered
    return chosen


def _json(doc: Any) -> bytes:
    try:
        return orjson.dumps(doc, default=str)
    except orjson.JSONEncodeError:  # a lone surrogate or a huge int in a detail: escape rather than fail the refusal
        return json.dumps(doc, default=str, separators=(",", ":")).encode()


def _xml_text(value: str) -> str:
    return _NOT_XML_CHAR.sub("\ufffd", value)


def _xml_body(members: dict[str, Any]) -> bytes:
    root = ET.Element("error")
    for name, value in members.items():
        if not _XML_NAME.fullmatch(name) or name.lower().startswith("xml"):
            continue  # not a name XML allows for an element
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, (str, int, float)):
            text = str(value)
        elif value is None:
            continue
        else:
            text = _json(value).decode()
        ET.SubElement(root, name).text = _xml_text(text)
    return b'<?xml version="1.0" encoding="UTF-8"?>' + ET.tostring(root, encoding="unicode").encode()


def render(
    problem: Problem, *, accept: str, tracking_id: str, relayed: bool = False
) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) of a refusal, in the shape and media type the client's Accept asks for."""
    media = error_media_type(accept)
    xtype = xroad_type(problem, relayed=relayed)
    headers = {k.lower(): v for k, v in problem.headers.items()}  # Retry-After, WWW-Authenticate
    headers["x-road-error"] = xtype
    if media == PROBLEM_MEDIA_TYPE:
        headers["content-type"] = PROBLEM_MEDIA_TYPE + ";charset=utf-8"
        return problem.status, headers, _json({**problem.to_dict(), "xroad_type": xtype})
    members: dict[str, Any] = {
        "type": xtype,
        "message": problem.detail,
        "detail": tracking_id,  # PR-REST §4.6 examples: the detail is the id to find the error in the logs
        "code": problem.code,
        "title": TITLES.get(problem.status, "Error"),
        "status": problem.status,
    }
    if problem.field is not None:
        members["field"] = problem.field
    for name, value in problem.extra.items():
        members.setdefault(name, value)
    headers["content-type"] = media + ";charset=utf-8"
    body = _json(members) if media == JSON else _xml_body(members)
    return xroad_status(xtype), headers, body


def problem_from_relay(status: int, headers: list[tuple[str, str]], body: bytes) -> Problem | None:
    """The hosting gateway's refusal (problem+json with X-Road-Error, the mesh hop) as a Problem the home gateway
    renders for its own client; None for anything else (the provider's own answer), never an exception."""
    fields = {name.lower(): value for name, value in headers}
    mesh_error = fields.get("x-road-error", "").strip()
    content_type = fields.get("content-type", "").split(";", 1)[0].strip().lower()
    if not mesh_error or content_type != PROBLEM_MEDIA_TYPE or not 400 <= status <= 599:
        return None
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(doc, dict):
        return None
    code, detail, field = doc.get("code"), doc.get("detail"), doc.get("field")
    precise = doc.get("status")
    if not isinstance(code, str) or not _CODE.fullmatch(code) or not isinstance(detail, str):
        return None
    if field is not None and not isinstance(field, str):
        return None
    if not isinstance(precise, int) or isinstance(precise, bool) or not 400 <= precise <= 599:
        precise = status
    kept = {"retry-after": "Retry-After", "www-authenticate": "WWW-Authenticate"}
    # the hosting gateway's own X-Road type (before the provider-side prefix), unless it sent a lienthong code
    xroad = mesh_error if _XROAD_TYPE.fullmatch(mesh_error) else None
    problem = Problem(
        precise,
        code,
        detail,
        field=field,
        headers={kept[k]: v for k, v in fields.items() if k in kept},
        xroad=xroad,
    )
    problem.extra = {k: v for k, v in doc.items() if k not in _STANDARD}
    return problem
