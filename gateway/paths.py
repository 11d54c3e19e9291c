"""Parsing and hygiene of `/r1/...` request paths (protocol §2), before any routing decision is taken.

What the gateway authorizes is exactly what it forwards: every segment is percent-decoded once (strict UTF-8) and
checked, the endpoint is matched on the decoded segments, and the path sent on (to the connector or the hosting
gateway) is built from those same segments, each re-encoded one canonical way - never the text as received. So a
server behind us that reads the path otherwise (cuts at `#`, `?` or `;`, decodes twice, folds Unicode, resolves dot
segments) still routes the endpoint that was authorized, or the call was refused here with 400 invalid-path.

Refused: a fragment (`#`, which no request target has: RFC 9112 §3.2), `.` and `..` segments, empty segments (`//`,
a trailing `/`), and any segment that decodes to `/`, `\\`, `?`, `#`, `;`, `%` (double encoding), a control
character, bytes that are not UTF-8 (overlong forms included), or text that is not in Unicode NFKC form.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from urllib.parse import quote, unquote_to_bytes

from lienthong.problem import Problem

METASERVICES = frozenset({"listMethods", "allowedMethods", "getOpenAPI"})

# RFC 3986 pchar less ';' (a path parameter to some servers) and '%': a path made only of these needs no decoding,
# and is its own canonical form, so the usual call costs one regex match
_SAFE = "!$&'()*+,=:@"
_PLAIN = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,=:@/]*")
_PLAIN_SEGMENT = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,=:@]*")
# what a decoded segment may not hold: delimiters a server behind us could cut or split at, and control characters
_FORBIDDEN = re.compile(r"[\x00-\x1f\x7f-\x9f/\\?#;%]")


@dataclass(frozen=True, slots=True)
class R1Path:
    """`service_id` for a service call; `subsystem` + `metaservice` for listMethods & co; listClients has neither."""

    service_id: str | None
    provider_path: str  # "/persons/001 203" ("/" when none): the decoded segments, for endpoint matching
    raw_provider_path: str = "/"  # "/persons/001%20203": the same segments canonically encoded, what is forwarded
    subsystem: str | None = None
    metaservice: str | None = None


def _invalid(detail: str) -> Problem:
    return Problem(400, "invalid-path", detail, field="path")


def _decode(segment: str) -> str:
    """One segment (latin-1 text of the raw bytes) percent-decoded once into checked text."""
    if _PLAIN_SEGMENT.fullmatch(segment):
        return segment
    try:
        text = unquote_to_bytes(segment.encode("latin-1")).decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        raise _invalid("a path segment is not valid UTF-8 once percent-decoded") from None
    bad = _FORBIDDEN.search(text)
    if bad is not None:
        raise _invalid(f"a path segment holds {bad.group()!r} once percent-decoded (or a bad percent-escape)")
    if not text.isascii() and not unicodedata.is_normalized("NFKC", text):
        raise _invalid("a path segment is not in Unicode normal form NFKC")
    return text


def _encode(text: str) -> str:
    return text if _PLAIN_SEGMENT.fullmatch(text) else quote(text, safe=_SAFE)


def parse_r1(raw_path: str) -> R1Path:
    """Split `/r1/VN/CLASS/MEMBER/SUBSYSTEM/SERVICE/rest...` (or `/listClients`); raise 400 invalid-path on anything
    suspicious."""
    if "#" in raw_path:
        raise _invalid("the request target has a fragment ('#'), which HTTP does not allow (RFC 9112 §3.2)")
    if raw_path == "/listClients":  # X-Road's own path for it (PR-META §2); /r1/listClients is kept as well
        return R1Path(None, "/", metaservice="listClients")
    if not raw_path.startswith("/r1/") and _decode(raw_path[1:].partition("/")[0]) != "r1":
        raise _invalid("the path does not start with one /r1/ segment")  # e.g. '/r1%2F...': no encoded '/' there either
    segments = raw_path.split("/")[2:]  # drop "" and "r1"
    if not segments or segments == [""]:
        raise Problem(404, "unknown-service", "no service named after /r1/", field="path")
    plain = _PLAIN.fullmatch(raw_path) is not None
    decoded = segments if plain else [_decode(seg) for seg in segments]
    for i, text in enumerate(decoded):
        if text == "" and i != len(decoded) - 1:
            raise _invalid("the path contains an empty segment ('//')")
        if text in (".", ".."):
            raise _invalid("the path contains a '.' or '..' segment")
    if decoded == ["listClients"]:
        return R1Path(None, "/", metaservice="listClients")
    if len(decoded) == 5 and decoded[4] in METASERVICES:
        return R1Path(None, "/", subsystem="/".join(decoded[:4]), metaservice=decoded[4])
    if len(decoded) < 5:
        raise Problem(
            404,
            "unknown-service",
            "the path names no service (/r1/VN/CLASS/MEMBER/SUBSYSTEM/SERVICE/...)",
            field="path",
        )
    rest = decoded[5:]
    if rest and rest[-1] == "" and len(rest) > 1:
        raise _invalid("the path ends with an empty segment")
    if not rest or rest == [""]:
        return R1Path("/".join(decoded[:5]), "/", "/")
    forwarded = segments[5:] if plain else [_encode(text) for text in rest]  # a plain path is its canonical form
    return R1Path("/".join(decoded[:5]), "/" + "/".join(rest), "/" + "/".join(forwarded))
