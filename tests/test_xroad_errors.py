"""Issue 15, the mesh's refusals on `/r1` in X-Road's error shape (gateway/xroad_errors.py), judged against X-Road's
Message Protocol for REST (PR-REST 1.0.4 §4.3 "X-Road error header", "Content-Type header", "Accept header"; §4.6
Error handling) and docs/protocol.md §6. The module is pure, so these tests call it directly."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from typing import Any

import orjson
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from gateway.xroad_errors import (
    XROAD_TYPES,
    error_media_type,
    problem_from_relay,
    render,
    xroad_status,
    xroad_type,
)
from lienthong.problem import TITLES, Problem
from tests.test_error_catalogue import PROTOCOL, ROOT, _modules, codes_in_source

MEDIA = {"application/problem+json", "application/json", "application/xml", "text/xml"}
X_ROAD_SHAPES = ("application/json", "application/xml", "text/xml")
PREFIXES = ("Client.", "Server.ClientProxy.", "Server.ServerProxy.")
# X-Road's own error names (its ErrorCodes, written in CamelCase as PR-REST writes them) that §6 uses
XROAD_NAMES = {"BadRequest", "InvalidBody", "SslAuthenticationFailed", "AccessDenied", "UnknownService",
               "OutdatedGlobalConf", "MalformedGlobalConf", "ServiceFailed", "NetworkError", "InternalError",
               "InconsistentResponse"}  # fmt: skip
# Parts of the gateway package that serve only the operations API and dashboard, never /r1 (protocol §2)
# the operations API's modules answer /ops/v1 in problem+json, never /r1
NOT_R1 = ("gateway/ops_api.py", "gateway/ops_auth.py", "gateway/ops_calls.py", "gateway/ops_components.py",
          "gateway/dashboard/")  # fmt: skip
XML_CHAR = re.compile("[\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _xml(body: bytes) -> dict[str, str]:
    root = ET.fromstring(body)  # noqa: S314 - our own module's output, parsed to check it
    assert root.tag == "error"
    return {child.tag: child.text or "" for child in root}


def _refusal(**extra: Any) -> Problem:
    return Problem(403, "access-denied", "no grant for this purpose", field="X-Purpose", **extra)


def test_status_follows_the_type_prefix() -> None:
    """PR-REST §4.6: the client's non-conforming request (category 3) is 400; a technical error of the service or of
    the Security Server (categories 2, 4) is 500, whatever lienthong's own status."""
    assert xroad_status("Client.BadRequest") == 400
    assert xroad_status("Server.ClientProxy.OutdatedGlobalConf") == 500
    assert xroad_status("Server.ServerProxy.AccessDenied") == 500
    for code, xtype in XROAD_TYPES.items():
        status, _headers, _body = render(Problem(418, code, "d"), accept="application/json", tracking_id="t")
        assert status == (400 if xtype.startswith("Client.") else 500), code


def test_x_road_error_header_equals_the_body_type() -> None:
    """PR-REST §4.3 "X-Road error header" and §4.6: a Security Server's error carries X-Road-Error, holding the error
    type, and the body's `type` field says the same."""
    for code in XROAD_TYPES:
        for media in X_ROAD_SHAPES:
            _status, headers, body = render(Problem(400, code, "d"), accept=media, tracking_id="t")
            shown = orjson.loads(body)["type"] if media == "application/json" else _xml(body)["type"]
            assert headers["x-road-error"] == shown == XROAD_TYPES[code], (code, media)


def test_json_body_has_x_road_members_then_lienthongs() -> None:
    """PR-REST §4.6 examples 2-4: `type`, `message` (what went wrong) and `detail` (an id to track the error);
    lienthong adds `code`, `title`, `status` (its precise one), `field` and the problem's own members, which never
    override those."""
    problem = _refusal(limit=5, code_hint="x", message="an extra must not replace X-Road's message")
    status, headers, body = render(problem, accept="application/json", tracking_id="9bc95b6e")
    doc = orjson.loads(body)
    assert status == 500 and headers["x-road-error"] == "Server.ServerProxy.AccessDenied"
    assert doc == {"type": "Server.ServerProxy.AccessDenied", "message": "no grant for this purpose",
                   "detail": "9bc95b6e", "code": "access-denied", "title": TITLES[403], "status": 403,
                   "field": "X-Purpose", "limit": 5, "code_hint": "x"}  # fmt: skip
    assert list(doc)[:3] == ["type", "message", "detail"]
    _status, _headers, body = render(Problem(400, "invalid-path", "bad"), accept="", tracking_id="t")
    assert "field" not in orjson.loads(body)  # only when one input was wrong


def test_xml_when_accept_asks_for_it() -> None:
    """PR-REST §4.6: the Security Server SHOULD respect the Accept header and return the error in the suggested
    content type; application/xml and text/xml give the same members as elements."""
    problem = _refusal(limit=5, nested={"a": [1]}, **{"not a name": "x", "xmlish": "reserved"})
    for media in ("application/xml", "text/xml", "text/xml;q=0.9, application/json;q=0.5"):
        status, headers, body = render(problem, accept=media, tracking_id="abc")
        wanted = media.split(";", 1)[0]
        assert status == 500 and headers["content-type"] == f"{wanted};charset=utf-8"
        assert body.startswith(b'<?xml version="1.0" encoding="UTF-8"?><error>')
        assert _xml(body) == {"type": "Server.ServerProxy.AccessDenied", "message": "no grant for this purpose",
                              "detail": "abc", "code": "access-denied", "title": "Forbidden", "status": "403",
                              "field": "X-Purpose", "limit": "5", "nested": '{"a":[1]}'}  # fmt: skip


@pytest.mark.parametrize("accept", ["", "*/*", "application/*", "text/html", "image/png;q=1", "nonsense", ",,;q=x"])
def test_json_by_default(accept: str) -> None:
    """PR-REST §4.3 "Accept header": without Accept the Security Server MUST use application/json; §4.6 "defaulting
    to application/json" also when Accept names nothing we have, or only wildcards."""
    assert error_media_type(accept) == "application/json"
    _status, headers, body = render(_refusal(), accept=accept, tracking_id="t")
    assert headers["content-type"] == "application/json;charset=utf-8" and orjson.loads(body)["type"]


def test_content_type_always_present_with_charset() -> None:
    """PR-REST §4.3 "Content-Type header": messages originating from the Security Server (error messages) MUST include
    the header and indicate the content's type and character encoding; §4.6 repeats the Content-Type MUST."""
    for accept in ("", "application/json", "application/xml", "text/xml", "application/problem+json"):
        _status, headers, _body = render(_refusal(), accept=accept, tracking_id="t")
        media, _sep, params = headers["content-type"].partition(";")
        assert media == error_media_type(accept) and params == "charset=utf-8", accept


def test_negotiation_follows_q_values_and_order() -> None:
    """PR-REST §4.6 "SHOULD respect the Accept header", read as RFC 9110 §12.5.1: the highest q wins, the earlier
    range a tie, the most specific range sets a type's q (q=0 refuses it), names and parameters are case-insensitive."""
    assert error_media_type("application/json;q=0.5, application/xml") == "application/xml"
    assert error_media_type("text/xml, application/xml") == "text/xml"
    assert error_media_type("application/xml, text/xml") == "application/xml"
    assert error_media_type("APPLICATION/XML; Charset=UTF-8; Q=0.7, application/json;q=0.6") == "application/xml"
    assert error_media_type("application/json;q=0, */*") == "application/xml"
    assert error_media_type("text/*") == "text/xml"
    assert error_media_type("*/*;q=0") == "application/json"  # nothing acceptable: the default all the same
    assert error_media_type("application/xml;q=1.5, text/xml;q=0.1") == "text/xml"  # q over 1 is malformed


def test_problem_json_only_when_named_keeps_precise_status_and_retry_after() -> None:
    """docs/protocol.md §6: a client naming application/problem+json (RFC 9457) gets lienthong's precise status and
    Retry-After (meaningful with 429/503, RFC 9110 §10.2.3), still flagged by X-Road-Error (PR-REST §4.3)."""
    quota = Problem(429, "quota-exceeded", "per_minute used up", headers={"Retry-After": "7"}, retry_after=7)
    status, headers, body = render(quota, accept="application/problem+json", tracking_id="t")
    assert status == 429 and headers["retry-after"] == "7"
    assert headers["content-type"] == "application/problem+json;charset=utf-8"
    assert headers["x-road-error"] == "Server.ServerProxy.QuotaExceeded"
    assert orjson.loads(body) == {**quota.to_dict(), "xroad_type": "Server.ServerProxy.QuotaExceeded"}
    for wildcard in ("*/*", "application/*", "application/*, text/xml;q=0.1"):
        assert error_media_type(wildcard) != "application/problem+json", wildcard
    assert error_media_type("application/json, application/problem+json") == "application/json"  # earlier wins
    status, headers, _body = render(quota, accept="application/json", tracking_id="t")
    assert status == 500 and headers["retry-after"] == "7"  # the X-Road shape keeps the header too


def test_relayed_refusals_are_the_provider_sides() -> None:
    """PR-REST §4.6: `Server.ClientProxy` is the consumer's Security Server, `Server.ServerProxy` the provider's; the
    hosting gateway's own fault reaches the client as ServerProxy, the client's fault stays Client."""
    assert xroad_type(Problem(503, "snapshot-expired", "d")) == "Server.ClientProxy.OutdatedGlobalConf"
    assert xroad_type(Problem(503, "snapshot-expired", "d"), relayed=True) == "Server.ServerProxy.OutdatedGlobalConf"
    assert xroad_type(Problem(400, "invalid-body", "d"), relayed=True) == "Client.InvalidBody"
    assert xroad_type(Problem(403, "access-denied", "d"), relayed=True) == "Server.ServerProxy.AccessDenied"
    explicit = Problem(500, "internal-error", "d", xroad="Server.ClientProxy.DatabaseError")
    assert xroad_type(explicit) == "Server.ClientProxy.DatabaseError"  # an explicit type wins over the table
    assert xroad_type(explicit, relayed=True) == "Server.ServerProxy.DatabaseError"
    assert xroad_type(Problem(500, "never-heard-of", "d")) == "Server.ClientProxy.InternalError"
    _status, headers, body = render(Problem(503, "circuit-open", "d"), accept="", tracking_id="t", relayed=True)
    assert headers["x-road-error"] == orjson.loads(body)["type"] == "Server.ServerProxy.ServiceFailed"


def test_a_relayed_refusal_is_rebuilt_and_rendered_for_the_client() -> None:
    """docs/protocol.md §6: the hosting gateway answers the mesh hop in problem+json with X-Road-Error (PR-REST §4.3);
    the home gateway rebuilds the problem and renders it, as the provider side's, in its client's shape."""
    sent = Problem(503, "snapshot-expired", "snapshot 3 h old", field="snapshot", headers={"Retry-After": "5"}, age=3)
    status, headers, body = render(sent, accept="application/problem+json", tracking_id="t")
    got = problem_from_relay(status, [(k.title(), v) for k, v in headers.items()], body)
    assert got is not None
    assert (got.status, got.code, got.detail, got.field, got.extra) == (503, "snapshot-expired", sent.detail,
                                                                         "snapshot", {"age": 3})  # fmt: skip
    assert got.headers == {"Retry-After": "5"} and got.xroad == "Server.ClientProxy.OutdatedGlobalConf"
    status, headers, body = render(got, accept="text/xml", tracking_id="home-1", relayed=True)
    assert status == 500 and headers["x-road-error"] == "Server.ServerProxy.OutdatedGlobalConf"
    assert _xml(body)["detail"] == "home-1" and headers["retry-after"] == "5"


def test_a_provider_answer_is_not_a_relayed_refusal() -> None:
    """PR-REST §4.6 example 5 A: without X-Road-Error the error is the provider's (category 1), returned as-is."""
    problem_body = _refusal().to_bytes()
    ok = [("content-type", "application/problem+json"), ("x-road-error", "Server.ServerProxy.AccessDenied")]
    assert problem_from_relay(403, ok, problem_body) is not None
    assert problem_from_relay(403, ok[:1], problem_body) is None  # no X-Road-Error: the connector's own
    assert problem_from_relay(403, [("content-type", "application/json"), ok[1]], problem_body) is None
    assert problem_from_relay(200, ok, problem_body) is None
    for body in (b"", b"{", b"[]", b'{"code": 5, "detail": "d"}', b'{"code": "x", "detail": "d", "field": 1}'):
        assert problem_from_relay(403, ok, body) is None, body
    legacy = problem_from_relay(403, [ok[0], ("X-Road-Error", "access-denied")], problem_body)
    assert legacy is not None and legacy.xroad is None  # a lienthong code in the header: the table decides


@settings(max_examples=1500, deadline=None)
@given(st.text())
@example("application/json;q=")
@example("a/b;q=0.5;q=1, */*;;;")
@example("\udc80/\ud800")
def test_error_media_type_never_raises(accept: str) -> None:
    """PR-REST §4.6: the error is answered whatever the client's Accept; a malformed one falls back to JSON."""
    assert error_media_type(accept) in MEDIA


accept_items = st.tuples(
    st.sampled_from(["application/json", "application/xml", "text/xml", "application/problem+json", "*/*",
                     "application/*", "text/*", "text/html", "x/y", "*/json"]),
    st.one_of(st.none(), st.sampled_from(["0", "0.5", "1", "1.000", "0.001", "2", "-1", "abc"])),
)  # fmt: skip


@settings(max_examples=500, deadline=None)
@given(st.lists(accept_items, max_size=6))
def test_structured_accept_headers_choose_a_named_or_default_type(items: list[tuple[str, str | None]]) -> None:
    """PR-REST §4.6 with RFC 9110 §12.5.1: the chosen type is one a range allows (q > 0) or the JSON default."""
    accept = ", ".join(r if q is None else f"{r};q={q}" for r, q in items)
    chosen = error_media_type(accept)
    assert chosen in MEDIA
    if chosen == "application/problem+json":
        assert any(r == chosen and q not in ("0", "2", "-1", "abc") for r, q in items)


text = st.text(alphabet=st.characters(codec=None, exclude_categories=()))


@settings(max_examples=800, deadline=None)
@given(text, text, text, st.dictionaries(text, st.one_of(text, st.integers(), st.lists(text, max_size=2))))
@example("\x00\x1b\ufffe\udc80]]><!--", "", "\x0b", {"a b": "x", "ok": "\x01"})
def test_every_shape_is_well_formed_for_any_text(detail: str, field: str, tracking: str, extra: dict) -> None:
    """PR-REST §4.6: the error body is in the asked content type; XML 1.0 forbids some characters (replaced), so the
    XML always parses; JSON always parses; neither raises."""
    taken = ("self", "status", "code", "detail", "field", "headers", "xroad")  # Problem's own parameters
    extra = {k: v for k, v in extra.items() if k not in taken}
    problem = Problem(400, "invalid-parameter", detail, field=field, **extra)
    for media in ("application/xml", "application/json", "application/problem+json"):
        _status, _headers, body = render(problem, accept=media, tracking_id=tracking)
        if media == "application/xml":
            members = _xml(body)
            assert members["message"] == _xml_readback(detail) and members["detail"] == _xml_readback(tracking)
        else:
            assert isinstance(json.loads(body), dict)  # stdlib: it reads the lone surrogates the fallback escapes


def _xml_readback(value: str) -> str:
    """What an XML parser gives back for text the module wrote: forbidden characters as U+FFFD, line ends as LF."""
    kept = "".join(c if XML_CHAR.fullmatch(c) else "\ufffd" for c in value)
    return kept.replace("\r\n", "\n").replace("\r", "\n")


@settings(max_examples=500, deadline=None)
@given(st.integers(0, 999), st.lists(st.tuples(text, text), max_size=4), st.binary(max_size=200))
def test_problem_from_relay_never_raises(status: int, headers: list[tuple[str, str]], body: bytes) -> None:
    """docs/protocol.md §6: whatever the hosting gateway sends back, the home gateway gets a Problem or None."""
    relay = [*headers, ("Content-Type", "application/problem+json"), ("X-Road-Error", "Client.BadRequest")]
    for given_headers in (headers, relay):
        got = problem_from_relay(status, given_headers, body)
        assert got is None or isinstance(got, Problem)


def _r1_codes() -> set[str]:
    modules = [(path, tree) for path, tree in _modules() if path.startswith(("gateway/", "policies/"))]
    pairs, _unread = codes_in_source([(p, t) for p, t in modules if not p.startswith(NOT_R1)])
    return {code for _status, code in pairs}


def test_every_code_a_gateway_or_policy_raises_has_an_x_road_type() -> None:
    """PR-REST §4.3/§4.6: every error of a Security Server names its X-Road type, starting Client, Server.ClientProxy
    or Server.ServerProxy; the codes are read from the gateway and policies source (tests/test_error_catalogue.py)."""
    assert {"access-denied", "quota-exceeded", "upstream-timeout"} <= _r1_codes()  # the walk sees them
    assert sorted(_r1_codes() - set(XROAD_TYPES)) == []
    for code, xtype in XROAD_TYPES.items():
        assert xtype.startswith(PREFIXES) and re.fullmatch(r"[A-Za-z.]+", xtype), code
    missing = [p for p in NOT_R1 if not (ROOT / p).exists()]
    assert missing == []  # an exclusion that names nothing would hide nothing: keep it true


def _doc_table() -> list[list[str]]:
    section = PROTOCOL.read_text().split("\n## 6. Errors", 1)[1].split("\n## ", 1)[0]
    lines = section.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| code | X-Road-Error |"))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip().strip("|").split("|")])
    return rows


def test_the_protocol_table_is_the_mapping() -> None:
    """docs/protocol.md §6 lists each /r1 code's X-Road type (PR-REST §4.6) and the status an X-Road client sees,
    exactly as XROAD_TYPES holds them; a type marked as X-Road's is one of X-Road's names, an extension is not."""
    rows = _doc_table()
    documented = {row[0].strip("`"): row[1].strip("`") for row in rows}
    assert documented == XROAD_TYPES
    for code, xtype, seen, _precise, origin in rows:
        name = xtype.strip("`").rsplit(".", 1)[1]
        assert int(seen) == xroad_status(xtype.strip("`")), code
        assert (name in XROAD_NAMES) == (origin == "X-Road"), (code, origin)
        assert origin in ("X-Road", "**lienthong extension**"), code
