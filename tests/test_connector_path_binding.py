"""The connector routes only the request its hosting gateway authorized (issue 13, finding 1, the connector's side).

The gateway's assertion to a connector names the method and the decoded path it matched and authorized (`method`,
`path`); the SDK refuses, 401 invalid-assertion, a request that reached it otherwise. So even a path that something
on the way cut, decoded again or rewrote cannot run another operation: the review's case (a `#` that made the
connector serve /persons/{id} under a grant for /persons/{id}/residence) is refused by the connector too, were a
gateway ever to forward it. The population connector runs under uvicorn on a real port; requests go over raw sockets
where an HTTP client would normalize the target.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from connectors.population import CONNECTOR
from tests.connector_support import SigningGateway, ThreadServer, serve

SERVICE = CONNECTOR.service_id
PERSON = "040199999999"  # well-formed, not on file: a request that passes the gate answers 404 not-found


@pytest.fixture(scope="module")
def gateway() -> SigningGateway:
    return SigningGateway.make()


@pytest.fixture(scope="module")
def connector(gateway: SigningGateway, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadServer]:
    url = f"sqlite:///{tmp_path_factory.mktemp('binding') / 'population.sqlite'}"
    with serve(CONNECTOR, gateway, url) as server:
        yield server


def _send(server: ThreadServer, method: str, target: str, assertion: str) -> tuple[int, dict[str, Any]]:
    head = f"{method} {target} HTTP/1.1\r\nHost: c\r\nConnection: close\r\nX-Lienthong-Assertion: {assertion}\r\n"
    if method == "POST":
        head += "Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
    else:
        head += "\r\n"
    data = b""
    with socket.create_connection(("127.0.0.1", server.port), timeout=60) as sock:
        sock.sendall(head.encode())
        while chunk := sock.recv(65536):
            data += chunk
    raw_head, _, body = data.partition(b"\r\n\r\n")
    return int(raw_head.split(b" ", 2)[1]), orjson.loads(body) if body else {}


def _signed(gateway: SigningGateway, method: str, path: str) -> str:
    return gateway.assertion(SERVICE, method=method, path=path)


def test_the_request_that_was_authorized_gets_through(connector: ThreadServer, gateway: SigningGateway) -> None:
    status, body = _send(connector, "GET", f"/persons/{PERSON}", _signed(gateway, "GET", f"/persons/{PERSON}"))
    assert (status, body["code"]) == (404, "not-found")


def test_the_reviews_fragment_is_refused_by_the_connector_too(connector: ThreadServer, gateway: SigningGateway) -> None:
    """uvicorn cuts the target at '#' and would route /persons/{id}: not what the assertion authorized."""
    assertion = _signed(gateway, "GET", f"/persons/{PERSON}/residence")
    status, body = _send(connector, "GET", f"/persons/{PERSON}#/residence", assertion)
    assert (status, body["code"]) == (401, "invalid-assertion")
    assert f"signed for GET /persons/{PERSON}/residence" in body["detail"]


@pytest.mark.parametrize(
    ("method", "target", "signed_method", "signed_path"),
    [("GET", f"/persons/{PERSON}", "GET", f"/persons/{PERSON}/residence"),
     ("GET", f"/persons/{PERSON}/residence", "GET", f"/persons/{PERSON}"),
     ("GET", f"/persons/{PERSON}?/residence", "GET", f"/persons/{PERSON}/residence"),
     ("GET", "/persons/040199999998", "GET", f"/persons/{PERSON}"),
     ("POST", "/persons/verify", "GET", "/persons/verify"),
     ("GET", "/persons/%2534", "GET", "/persons/4")],
)  # fmt: skip
def test_any_other_request_is_refused(
    connector: ThreadServer, gateway: SigningGateway, method: str, target: str, signed_method: str, signed_path: str
) -> None:
    status, body = _send(connector, method, target, _signed(gateway, signed_method, signed_path))
    assert (status, body["code"]) == (401, "invalid-assertion"), body


def test_the_decoded_path_is_what_is_compared(connector: ThreadServer, gateway: SigningGateway) -> None:
    """The gateway signs the decoded segments it matched and sends them canonically encoded: the same path."""
    status, body = _send(connector, "GET", "/persons/0401%2099", _signed(gateway, "GET", "/persons/0401 99"))
    assert status != 401, body


def test_an_assertion_that_names_no_request_is_taken_as_before(
    connector: ThreadServer, gateway: SigningGateway
) -> None:
    status, body = _send(connector, "GET", f"/persons/{PERSON}", gateway.assertion(SERVICE))
    assert (status, body["code"]) == (404, "not-found")
