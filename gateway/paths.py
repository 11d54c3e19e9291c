"""Parsing and hygiene of `/r1/...` request paths (protocol §2), before any routing decision is taken.

The raw path is checked, not a normalised one, so `..`, `.`, `//` and encoded slashes are refused rather than
silently resolved: a gateway must never route a call somewhere other than where its URL literally points.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote

from lienthong.problem import Problem

METASERVICES = frozenset({"listMethods", "allowedMethods", "getOpenAPI"})


@dataclass(frozen=True, slots=True)
class R1Path:
    """`service_id` for a service call; `subsystem` + `metaservice` for listMethods & co; listClients has neither."""

    service_id: str | None
    provider_path: str  # "/persons/001..." ("/" when none), percent-decoded once, for endpoint matching
    raw_provider_path: str = "/"  # the same as received (still encoded), for the connector's URL
    subsystem: str | None = None
    metaservice: str | None = None


def _invalid(detail: str) -> Problem:
    return Problem(400, "invalid-path", detail, field="path")


def parse_r1(raw_path: str) -> R1Path:
    """Split `/r1/VN/CLASS/MEMBER/SUBSYSTEM/SERVICE/rest...`; raise 400 invalid-path on anything suspicious."""
    lowered = raw_path.lower()
    if "%2f" in lowered or "%5c" in lowered or "\\" in raw_path:
        raise _invalid("the path contains an encoded '/' or a '\\'")
    segments = raw_path.split("/")[2:]  # drop "" and "r1"
    if not segments or segments == [""]:
        raise Problem(404, "unknown-service", "no service named after /r1/", field="path")
    decoded: list[str] = []
    for i, seg in enumerate(segments):
        text = unquote(seg) if "%" in seg else seg
        if text == "" and i != len(segments) - 1:
            raise _invalid("the path contains an empty segment ('//')")
        if text in (".", ".."):
            raise _invalid("the path contains a '.' or '..' segment")
        if "/" in text or "\x00" in text:
            raise _invalid("a path segment decodes to a '/' or a NUL")
        decoded.append(text)
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
    return R1Path("/".join(decoded[:5]), "/" + "/".join(rest), "/" + "/".join(segments[5:]))
