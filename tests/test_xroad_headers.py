"""Issue 15, PR-REST over a live mesh: response headers, headers to the provider, the request hash and errors,
judged against X-Road's Message Protocol for REST (PR-REST 1.0.4). "X-Road specific headers returned in the
response": "The response contains some X-Road specific headers that are set by the provider Security Server. The
provider service SHOULD NOT set these headers since in that case they will be overwritten": X-Road-Client,
X-Road-Service, X-Road-Id, X-Road-Request-Hash, X-Road-Error, X-Road-Request-Id.

A live mesh (real registry, TLS): a province calls the national database through its home gateway; the upstream is
the echo app, which sets a forged X-Road-Error of its own (tests/mesh_support.echo_app).
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator
from typing import Any
from xml.etree import ElementTree

import httpx
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lienthong import pki
from lienthong.redis_connection import EmbeddedRedis, free_port
from tests.mesh_support import MESH_TLS, Mesh, call_headers

HANG = 60.0  # seconds: a bound that only catches a hang
PERSONS = "VN/GOV/BCA/population/persons"
CLIENT = "VN/PROV/NGHEAN/civil-status"
LOCAL = "VN/GOV/BCA/app"  # a client homed at the gateway that hosts the service
SLOW = "VN/GOV/BCA/population/slow"  # answers after the service's 300 ms timeout
DEAD = "VN/GOV/BCA/population/dead"  # its connector address has nobody listening
PERSON = "040203004567"


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory, redis_server: EmbeddedRedis) -> Iterator[Mesh]:
    root = tmp_path_factory.mktemp("xroad-headers")
    m = Mesh(root, root / "logs", policies="authn,authz", redis_url=redis_server.url.rsplit("/", 1)[0] + "/13")
    redis.Redis.from_url(m.redis_url).flushdb()
    try:
        for code in ("national", "nghean"):
            m.add_gateway(code)
        m.start_registry()
        upstream = m.start_upstream("echo")
        m.add_parties({"VN/GOV/BCA": "national", "VN/PROV/NGHEAN": "nghean"},
                      ("VN/GOV/BCA/population", CLIENT, LOCAL), [CLIENT, LOCAL])  # fmt: skip
        endpoints = [("GET", "/persons/{id}"), ("GET", "/persons/{id}/cookies"), ("GET", "/status/{code}/{id}")]
        m.add_service(PERSONS, "national", upstream, endpoints, subject_param="id")
        m.add_service(SLOW, "national", upstream, [("GET", "/slow/{ms}/{id}")], timeout_ms=300)
        m.add_service(DEAD, "national", f"https://127.0.0.1:{free_port()}", [("GET", "/x/{id}")])
        m.add_grant("g", CLIENT, PERSONS, ["birth-registration"])
        m.add_grant("g-local", LOCAL, PERSONS, ["birth-registration"])
        m.add_grant("g-slow", CLIENT, SLOW, ["birth-registration"])
        m.add_grant("g-dead", CLIENT, DEAD, ["birth-registration"])
        version = m.publish()
        m.start_gateway("national")
        m.start_gateway("nghean")
        m.wait_version(version, timeout=HANG)
        yield m
    finally:
        m.stop()


def _get(mesh: Mesh, path: str, headers: dict[str, str]) -> httpx.Response:
    with httpx.Client(verify=MESH_TLS, timeout=HANG) as http:
        return http.get(f"{mesh.gateways['nghean'].url}/r1/{path}", headers=headers)


def test_the_headers_are_set_by_the_mesh_and_unique_per_request(mesh: Mesh) -> None:
    """PR-REST: X-Road-Client "specifies the member/subsystem that is used as a service client", X-Road-Service "the
    serviceId that is invoked", X-Road-Request-Id "unique identifier for the request" (X-Road-Id is the client's
    message id, which two requests may share)."""
    first = _get(mesh, f"{PERSONS}/persons/{PERSON}", call_headers(mesh, CLIENT, "nghean", **{"X-Road-Id": "same"}))
    second = _get(mesh, f"{PERSONS}/persons/{PERSON}", call_headers(mesh, CLIENT, "nghean", **{"X-Road-Id": "same"}))
    for r in (first, second):
        assert r.status_code == 200, r.text
        assert r.headers["x-road-client"] == CLIENT
        assert r.headers["x-road-service"] == PERSONS
        assert r.headers["x-road-id"] == "same"
        assert "x-road-error" not in r.headers  # the upstream's forged one is overwritten, as PR-REST says
        assert len(r.headers.get_list("x-road-client")) == 1  # the hosting gateway's copy is not passed on twice
    assert first.headers["x-road-request-id"] != second.headers["x-road-request-id"]


def test_a_refusal_names_the_client_and_service_it_established(mesh: Mesh) -> None:
    """A refusal after routing still says which client and service it refused; before authentication it names
    neither (nothing was established, and echoing an unverified claim would make it look established)."""
    refused = _get(mesh, f"{PERSONS}/households/H1", call_headers(mesh, CLIENT, "nghean"))
    assert refused.status_code == 404 and refused.headers["x-road-error"]
    assert refused.headers["x-road-client"] == CLIENT and refused.headers["x-road-request-id"]
    anonymous = _get(mesh, f"{PERSONS}/persons/{PERSON}", {"X-Road-Client": CLIENT})
    assert anonymous.status_code == 500 and anonymous.json()["code"] == "invalid-token"  # X-Road's shape (§4.6)
    assert "x-road-client" not in anonymous.headers and "x-road-service" not in anonymous.headers
    assert anonymous.headers["x-road-request-id"]


# -- headers to the provider (PR-REST §4.3) ------------------------------------------------------------------------

PASSED_ON = {
    "x-powered-by": "PHP/5.2.17",  # §4.3 "User defined headers ... MUST be passed to recipient unmodified"
    "x-pingback": "https://example.com/xmlrpc.php",
    "cache-control": "no-cache, no-store, must-revalidate",  # §4.3 "Cache headers MUST be passed as-is"
    "pragma": "no-cache",
    "if-none-match": '"v7"',
    "if-modified-since": "Tue, 01 Dec 2026 10:00:00 GMT",
    "x-road-userid": "VN001203004567",  # §4.3 optional X-Road headers
    "x-road-issue": "HS-2026-77",
    "x-road-represented-party": "GOV/BCA",  # §4.3 "Represented Party"
    "content-language": "vi",
    "cookie": "session=abc",
}
FILTERED = {
    "x-secret-hop": "named in Connection",  # §4.3 "Filtered headers": hop-by-hop, and what Connection names
    "keep-alive": "timeout=5",
    "x-forwarded-for": "10.0.0.7",  # §4.3: headers that can leak the name or address of the origin host
    "forwarded": "for=10.0.0.7",
    "user-agent": "ministry-app/1.0",
    "x-http-method-override": "DELETE",  # lienthong: never changes what was authorized
    "x-lienthong-assertion-extra": "forged",  # the mesh's own namespace
    "x-road-request-hash": "forged",  # §4.3 "The request message SHOULD NOT contain the request hash header"
}


def _echoed(r: httpx.Response) -> dict[str, Any]:
    assert r.status_code == 200, r.text
    headers: dict[str, Any] = r.json()["echo"]["headers"]
    return headers


def test_client_headers_reach_the_provider_unmodified_across_two_gateways(mesh: Mesh) -> None:
    """PR-REST §4.3 "User defined headers", "Cache headers", the optional X-Road headers and X-Road-Client reach the
    provider information system as the client sent them, through the home and the hosting gateway; Content-Type and
    Accept "MUST be transported unmodified"."""
    sent = {**PASSED_ON, "Accept": "application/json;q=0.9, text/plain;q=0.1"}
    echoed = _echoed(_get(mesh, f"{PERSONS}/persons/{PERSON}", call_headers(mesh, CLIENT, "nghean", **sent)))
    for name, value in sent.items():
        assert echoed.get(name.lower()) == value, name
    assert echoed["x-road-client"] == CLIENT


def test_filtered_headers_never_reach_the_provider(mesh: Mesh) -> None:
    """PR-REST §4.3 "Filtered headers": hop-by-hop fields (and those Connection names), Host, User-Agent and what can
    leak the origin host are not passed through; nor a method override or anything in the mesh's namespace."""
    headers = call_headers(mesh, CLIENT, "nghean", **FILTERED, Connection="x-secret-hop")
    echoed = _echoed(_get(mesh, f"{PERSONS}/persons/{PERSON}", headers))
    for name in FILTERED:
        assert echoed.get(name) != FILTERED[name], name
    assert "127.0.0.1" in echoed["host"] and echoed.get("user-agent") != "ministry-app/1.0"


def test_the_end_users_authorization_travels_when_the_client_uses_its_certificate(mesh: Mesh) -> None:
    """PR-REST §4.7: JWT authentication between the client and its security server is not supported, but "sending
    JWT tokens in HTTP headers from the service consumer to the service provider is supported - X-Road passes the
    headers unmodified". A client authenticated by certificate may carry the end user's Authorization to the provider;
    a client's own mesh token never leaves its home gateway."""
    end_user = "Bearer eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJjaXRpemVuIn0.c2ln"
    with mesh.client(cert=mesh.client_cert(CLIENT), timeout=HANG) as http:
        r = http.get(f"{mesh.gateways['nghean'].url}/r1/{PERSONS}/persons/{PERSON}",
                     headers={"X-Road-Client": CLIENT, "Authorization": end_user})  # fmt: skip
    assert _echoed(r)["authorization"] == end_user
    own = call_headers(mesh, CLIENT, "nghean")  # a lienthong client token
    with mesh.client(cert=mesh.client_cert(CLIENT), timeout=HANG) as http:
        r = http.get(f"{mesh.gateways['nghean'].url}/r1/{PERSONS}/persons/{PERSON}", headers=own)
    assert "authorization" not in _echoed(r)


def test_the_last_of_several_x_road_client_headers_is_the_client(mesh: Mesh) -> None:
    """PR-REST §4.3: "If multiple X-Road-Client headers are present in the request, the Security Server SHOULD use
    the last defined header as the initiator of the service call"."""
    with mesh.client(cert=mesh.client_cert(CLIENT), timeout=HANG) as http:
        r = http.get(f"{mesh.gateways['nghean'].url}/r1/{PERSONS}/persons/{PERSON}",
                     headers=[("X-Road-Client", "VN/PROV/HANOI/other"), ("X-Road-Client", CLIENT)])  # fmt: skip
    assert r.headers["x-road-client"] == CLIENT and _echoed(r)["x-road-client"] == CLIENT


def test_repeated_response_headers_all_reach_the_client(mesh: Mesh) -> None:
    """PR-REST §4.6 category 1: the provider's "status code, response body and HTTP headers ... are returned as-is":
    two Set-Cookie and two Link fields stay two of each (RFC 9110 §5.3: Set-Cookie cannot be combined)."""
    r = _get(mesh, f"{PERSONS}/persons/{PERSON}/cookies", call_headers(mesh, CLIENT, "nghean"))
    assert r.status_code == 200, r.text
    assert r.headers.get_list("set-cookie") == ["a=1; Path=/", "b=2; Path=/"]
    assert r.headers.get_list("link") == ["</p/2>; rel=next", "</p/9>; rel=last"]
    assert r.headers["x-provider-note"] == "kept"


# PR-REST §4.3 "Filtered headers", and what lienthong adds to them (docs/protocol.md §3), written from the texts
NEVER_PASSED = {
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer", "upgrade", "user-agent",
    "server", "forwarded", "via", "x-forwarded-for", "x-forwarded-host", "x-forwarded-proto", "x-real-ip",
    "x-http-method-override", "x-http-method", "x-method-override", "accept-encoding", "x-road-request-hash",
    "x-road-security-server", "x-road-service", "x-road-error", "x-road-request-id",
}  # fmt: skip
# standard fields whose value would change the request itself (framing, routing, identity): left out of the sample
SHAPING = {"host", "content-length", "transfer-encoding", "expect", "authorization", "x-road-client", "x-purpose",
           "x-road-id", "traceparent", "accept"}  # fmt: skip
HEADER_NAMES = st.one_of(
    st.from_regex(r"x-[a-z0-9][a-z0-9-]{0,14}", fullmatch=True),
    st.sampled_from(sorted(NEVER_PASSED - {"connection", "upgrade", "te", "trailer"})),
    st.sampled_from(["cache-control", "pragma", "if-match", "if-none-match", "if-modified-since", "range", "cookie",
                     "content-language", "accept-language", "x-road-userid", "x-road-issue", "x-road-represented-party",
                     "dnt", "prefer", "origin", "referer", "x-lienthong-trace", "x-lienthong-assertion-copy"]),
)  # fmt: skip
HEADER_VALUES = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=40)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])  # fmt: skip
@given(fields=st.dictionaries(HEADER_NAMES.filter(lambda n: n not in SHAPING), HEADER_VALUES, min_size=1, max_size=6))
def test_every_header_is_passed_on_or_filtered_as_pr_rest_says(mesh: Mesh, fields: dict[str, str]) -> None:
    """PR-REST §4.3, as a property over two gateways: a header the client sends reaches the provider unmodified
    ("User defined headers ... MUST be passed to recipient unmodified", "Cache headers MUST be passed as-is") unless
    it is one PR-REST filters or the mesh keeps for itself, which never arrives with the client's value."""
    echoed = _echoed(_get(mesh, f"{PERSONS}/persons/{PERSON}", call_headers(mesh, CLIENT, "nghean", **fields)))
    for name, value in fields.items():
        if name in NEVER_PASSED or name.startswith("x-lienthong-"):
            assert echoed.get(name) != value, name
        else:
            assert echoed.get(name) == value, name


# -- X-Road-Request-Hash (PR-REST §4.3 "Request hash header") ------------------------------------------------------

HOP = {"host", "content-length", "transfer-encoding", "connection", "keep-alive", "te", "trailer", "upgrade",
       "proxy-connection", "proxy-authorization", "expect", "user-agent", "x-road-request-hash"}  # fmt: skip


def _expected_hash(request: httpx.Request) -> str:
    """Written from PR-REST §4.3 and docs/protocol.md §3 (not from the gateway's code): base64
    SHA512(SHA512(headers) + SHA512(body)), or SHA512(headers) without a body; headers = the request line and the
    lower-cased fields, sorted, less the hop fields."""
    fields = sorted((k.lower(), v) for k, v in request.headers.items() if k.lower() not in HOP)
    head = f"{request.method} {request.url.raw_path.decode()} HTTP/1.1\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in fields)
    digest = hashlib.sha512(head.encode("latin-1")).digest()
    if request.content:
        digest = hashlib.sha512(digest + hashlib.sha512(request.content).digest()).digest()
    return base64.b64encode(digest).decode()


def test_request_hash_is_sha512_of_the_request_the_hosting_gateway_received(mesh: Mesh) -> None:
    """PR-REST §4.3: "this field SHALL contain the base-64 encoded SHA512(SHA512(headers)+SHA512(body)) ... If there
    is no body ... SHA512(headers)"; "automatically filled in by the service provider's Security Server". A client of
    the hosting gateway itself can recompute it over what it sent."""
    with httpx.Client(verify=MESH_TLS, timeout=HANG) as http:
        for query in ("", "?a=1&b=%20x"):
            r = http.get(f"{mesh.gateways['national'].url}/r1/{PERSONS}/persons/{PERSON}{query}",
                         headers=call_headers(mesh, LOCAL, "national", **{"X-Custom": "v"}))  # fmt: skip
            assert r.status_code == 200, r.text
            assert r.headers["x-road-request-hash"] == _expected_hash(r.request)
            assert len(base64.b64decode(r.headers["x-road-request-hash"])) == 64


def test_request_hash_of_a_forwarded_call_is_the_hosting_gateways(mesh: Mesh) -> None:
    """PR-REST §4.3: the hash "MUST be automatically created by the service provider's Security Server and it MUST be
    verified by the service client's Security Server". Through two gateways the client gets the hosting gateway's
    hash (verified by its home gateway), and the provider's own X-Road-Request-Hash is replaced."""
    r = _get(mesh, f"{PERSONS}/persons/{PERSON}", call_headers(mesh, CLIENT, "nghean"))
    assert r.status_code == 200, r.text
    hosting = r.headers["x-road-request-hash"]
    assert len(r.headers.get_list("x-road-request-hash")) == 1 and len(base64.b64decode(hosting)) == 64
    assert hosting != _expected_hash(r.request)  # made over the hop's request (with the assertion), not the client's


# -- errors (PR-REST §4.3 "X-Road error header", §4.6 "Error handling") ----------------------------------------------


def _xroad(path: str, headers: dict[str, str] | None = None, gateway: str = "nghean") -> httpx.Response:
    """A call as an X-Road client makes it: its TLS client certificate, X-Road-Client, no token, no X-Purpose."""
    with httpx.Client(verify=pki.client_context(MESH.ca_path, MESH.client_cert(CLIENT)), timeout=HANG) as http:
        return http.get(f"{MESH.gateways[gateway].url}/r1/{path}", headers={"X-Road-Client": CLIENT, **(headers or {})})


MESH: Mesh  # set by the autouse fixture below, so _xroad needs no mesh argument


@pytest.fixture(autouse=True)
def _mesh_for_xroad(mesh: Mesh) -> None:
    global MESH
    MESH = mesh


def _xroad_error(r: httpx.Response, status: int, xroad_type: str, code: str) -> dict[str, Any]:
    """PR-REST §4.6: the status by category, X-Road-Error = the body's `type`, `Content-Type` with the charset, the
    body `type`/`message`/`detail`; lienthong's code as an extra member."""
    assert r.status_code == status, r.text
    assert r.headers["x-road-error"] == xroad_type
    assert r.headers["content-type"] == "application/json;charset=utf-8"
    body: dict[str, Any] = r.json()
    assert body["type"] == xroad_type and body["message"] and body["code"] == code
    assert body["detail"] == r.headers["x-road-request-id"]  # the id to find the error by, as §4.6's examples show
    return body


def test_a_request_that_breaks_the_protocol_is_400_client_bad_request() -> None:
    """PR-REST §4.6 category 3: "The consumer information system sends a request that does not comply with the X-Road
    Message Protocol for REST" -> "400 - Bad Request", type `Client.*` (example 3: Client.BadRequest)."""
    body = _xroad_error(_xroad(f"{PERSONS}/persons/%2e%2e"), 400, "Client.BadRequest", "invalid-path")
    assert body["status"] == 400 and body["field"] == "path"


def test_a_bad_x_road_id_is_400_client_bad_request() -> None:
    """PR-REST §4.3 X-Road-Id and §4.6 category 3: a message id the gateway cannot keep (over 128 printable ASCII
    characters) is the client's error, refused before anything else, still with the id of this answer."""
    body = _xroad_error(_xroad(f"{PERSONS}/persons/{PERSON}", {"X-Road-Id": "x" * 200}), 400, "Client.BadRequest",
                        "invalid-parameter")  # fmt: skip
    assert body["field"] == "X-Road-Id"


def test_a_refusal_by_the_security_server_is_500_with_its_type() -> None:
    """PR-REST §4.6 category 4 ("The Security Server encounters a technical error" -> 500) and example 5: errors
    occurring on X-Road start with `Server.ClientProxy` or `Server.ServerProxy`. No grant for this purpose: the
    provider side's AccessDenied; lienthong's precise status stays in the body."""
    body = _xroad_error(_xroad(f"{PERSONS}/persons/{PERSON}", {"X-Purpose": "marketing"}), 500,
                        "Server.ServerProxy.AccessDenied", "access-denied")  # fmt: skip
    assert body["status"] == 403 and body["title"] == "Forbidden"


def test_a_provider_that_cannot_be_reached_is_500_service_failed() -> None:
    """PR-REST §4.6 category 2, "The provider information system encounters a technical error and is not able to return
    a response" -> 500; example 5: "`Server.ServerProxy.ServiceFailed` means that the provider Security Server did
    not get answer from the provider service". The hosting gateway's refusal reaches the client through its home
    gateway with the provider side's type."""
    body = _xroad_error(_xroad(f"{DEAD}/x/1"), 500, "Server.ServerProxy.ServiceFailed", "upstream-failed")
    assert body["status"] == 502


def test_a_provider_that_times_out_is_500_network_error() -> None:
    """PR-REST §4.6 example 2: "the service timed out" -> 500, `Server.ServerProxy.NetworkError`."""
    body = _xroad_error(_xroad(f"{SLOW}/slow/2000/1"), 500, "Server.ServerProxy.NetworkError", "upstream-timeout")
    assert body["status"] == 504


def test_the_providers_own_error_is_returned_as_is() -> None:
    """PR-REST §4.6 category 1: "The status code, response body and HTTP headers are generated by the provider
    information system and they are returned as-is"; example 5 A): no X-Road-Error, so the source is the provider."""
    r = _xroad(f"{PERSONS}/status/502/{PERSON}")
    assert r.status_code == 502 and "x-road-error" not in r.headers
    assert r.json()["echo"]["path"].endswith(f"/status/502/{PERSON}")


def test_an_xml_client_gets_the_error_in_xml() -> None:
    """PR-REST §4.6: "the Security Server implementation SHOULD respect the `Accept` header ... and return the X-Road
    error response using the suggested content type ... Additionally, the Security Server MUST include
    `Content-Type` header"."""
    r = _xroad(f"{PERSONS}/persons/{PERSON}", {"X-Purpose": "marketing", "Accept": "application/xml"})
    assert r.status_code == 500 and r.headers["content-type"] == "application/xml;charset=utf-8"
    root = ElementTree.fromstring(r.content)  # noqa: S314 - our own gateway's answer, in a test
    assert (
        root.tag == "error" and root.findtext("type") == r.headers["x-road-error"] == "Server.ServerProxy.AccessDenied"
    )
    assert root.findtext("message") and root.findtext("detail") == r.headers["x-road-request-id"]
    assert root.findtext("code") == "access-denied"


def test_lienthong_clients_opt_in_to_problem_details_at_the_precise_status() -> None:
    """docs/protocol.md §6: `Accept: application/problem+json` (RFC 9457) keeps lienthong's status; X-Road-Error still
    carries the X-Road type (PR-REST §4.3)."""
    r = _xroad(f"{PERSONS}/persons/{PERSON}", {"X-Purpose": "marketing", "Accept": "application/problem+json"})
    assert r.status_code == 403 and r.headers["content-type"].startswith("application/problem+json")
    assert r.headers["x-road-error"] == "Server.ServerProxy.AccessDenied" == r.json()["xroad_type"]
    assert r.json()["code"] == "access-denied"


def test_a_hosting_gateway_out_of_reach_is_the_client_proxys_network_error(mesh: Mesh) -> None:
    """PR-REST §4.6 example 5: the component is deduced from the type; the home gateway failing to reach the hosting
    gateway is `Server.ClientProxy.*`, not the provider's. Run last: it stops the national gateway."""
    mesh.stop_gateway("national")
    body = _xroad_error(
        _xroad(f"{PERSONS}/persons/{PERSON}"), 500, "Server.ClientProxy.NetworkError", "upstream-failed"
    )
    assert body["status"] in (502, 503)
