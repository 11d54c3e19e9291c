"""gateway.paths in process, by property (issue 13, finding 1): for any request path, parse_r1 refuses it (400 or 404
naming the field "path") or gives a forwarded path that decodes, once and strictly, to exactly the segments it
matched on, is its own canonical form (parsing it again, as the hosting gateway does after a hop, changes nothing),
and holds nothing a server behind the gateway could cut at, resolve or read another way. The live-mesh version of
this, through real gateways to a recording upstream, is tests/test_path_differential.py.
"""

from __future__ import annotations

import re
import unicodedata
from urllib.parse import quote, unquote

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from gateway.paths import parse_r1
from lienthong.problem import Problem

SERVICE = "/r1/VN/GOV/BCA/population/persons"
SAFE = "!$&'()*+,=:@"
CANONICAL = re.compile(r"(/([A-Za-z0-9\-._~!$&'()*+,=:@]|%[0-9A-F]{2})*)*")

escape = st.integers(0, 255).map(lambda b: f"%{b:02x}" if b % 2 else f"%{b:02X}")
utf8_escape = st.characters(blacklist_categories=["Cs"]).map(lambda c: "".join(f"%{b:02X}" for b in c.encode()))
raw_char = st.characters(max_codepoint=255)  # the server hands the target over as latin-1 text of its bytes
piece = st.one_of(st.sampled_from(["/", "%", "#", "?", ";", ".", "..", "\\", "persons", "001"]), escape,
                  utf8_escape, raw_char)  # fmt: skip
rests = st.lists(piece, max_size=12).map("".join)


def _check(rest: str) -> None:
    try:
        parsed = parse_r1(SERVICE + rest)
    except Problem as problem:
        assert problem.status in (400, 404) and problem.field == "path", problem.detail
        return
    forwarded, matched = parsed.raw_provider_path, parsed.provider_path
    assert CANONICAL.fullmatch(forwarded), forwarded
    assert unquote(forwarded, errors="strict") == matched
    segments = matched.split("/")[1:]
    assert matched == "/" or all(s not in ("", ".", "..") for s in segments), matched
    for segment in segments:
        assert not re.search(r"[\x00-\x1f\x7f-\x9f/\\?#;%]", segment), segment
        assert unicodedata.is_normalized("NFKC", segment)
    # the hop to the hosting gateway: /r1/ + the service id (a registered one, so plain text there) + forwarded
    service = "/".join(quote(part, safe=SAFE) for part in str(parsed.service_id).split("/"))
    again = parse_r1(f"/r1/{service}{forwarded if forwarded != '/' else ''}")
    assert (again.provider_path, again.raw_provider_path) == (matched, forwarded)


@settings(max_examples=2000, deadline=None)
@given(rests)
@example("/persons/001#/residence")
@example("/persons/001%23/residence")
@example("/persons/001%C0%AF/residence")
@example("/persons/%EF%BD%92esidence")
@example("/persons/001%0A")
@example("/persons/001%25")
@example("/persons/%2e%2E")
def test_parse_r1_forwards_exactly_what_it_matched(rest: str) -> None:
    _check(rest)


@pytest.mark.parametrize(
    ("rest", "matched", "forwarded"),
    [("/persons/001%20203", "/persons/001 203", "/persons/001%20203"),
     ("/persons/%70%65rsons", "/persons/persons", "/persons/persons"),
     ("/persons/Ng%c3%b4", "/persons/Ngô", "/persons/Ng%C3%B4"),
     ("/persons/a{b}|c", "/persons/a{b}|c", "/persons/a%7Bb%7D%7Cc"),
     ("/persons/a+b:c@d", "/persons/a+b:c@d", "/persons/a+b:c@d")],
)  # fmt: skip
def test_the_forwarded_path_is_the_canonical_spelling(rest: str, matched: str, forwarded: str) -> None:
    parsed = parse_r1(SERVICE + rest)
    assert (parsed.provider_path, parsed.raw_provider_path) == (matched, forwarded)


@pytest.mark.parametrize(
    "rest",
    ["/persons/001#/residence", "/persons/001%23", "/persons/001%3Fx", "/persons/001;x", "/persons/001%3b",
     "/persons/001%00", "/persons/001%0d%0a", "/persons/%C0%AF", "/persons/%E0%80%AF", "/persons/%FF",
     "/persons/%ED%A0%80", "/persons/%EF%BC%8F", "/persons/%E2%84%AA", "/persons/e%CC%81", "/persons/%252e%252e",
     "/persons/%zz", "/persons/%", "/persons/%C2%85"],
)  # fmt: skip
def test_what_a_server_behind_could_read_otherwise_is_400(rest: str) -> None:
    with pytest.raises(Problem) as caught:
        parse_r1(SERVICE + rest)
    assert (caught.value.status, caught.value.code, caught.value.field) == (400, "invalid-path", "path")


@pytest.mark.parametrize("raw", ["/r1%2FVN/GOV/BCA/population/persons/persons/1", "/%72%31%2fVN/GOV/BCA/population/"
                                 "persons/persons/1", "/r1%00/VN/GOV/BCA/population/persons/persons/1"])  # fmt: skip
def test_the_r1_prefix_is_one_segment_too(raw: str) -> None:
    """The server sends '/r1%2F...' here too (it is /r1/ once decoded): the prefix is held to the same rules."""
    with pytest.raises(Problem) as caught:
        parse_r1(raw)
    assert (caught.value.status, caught.value.code) == (400, "invalid-path")
