"""A connector over TLS: HTTPS with a client certificate required, and only the hosting gateway's accepted.

The TLS context is the mesh's (pki.server_context, TLS 1.3, CERT_REQUIRED, chained to the mesh CA): a client with no
certificate, one from another CA, expired or not yet valid never completes the handshake, so it never reaches HTTP.
Which certificate it was is then checked per connection: uvicorn does not hand the peer certificate to the ASGI app,
so `PeerProtocol` (uvicorn's httptools protocol, passed as `http=`) reads it once in connection_made and puts it in
the `state` of every request on that connection; ConnectorApp answers 403 `certificate-identity-mismatch` unless it
names urn:lienthong:gateway:<the hosting gateway> (and answers the same, failing closed, when no protocol recorded a
peer, e.g. the app served by another server).

With the registry configured, the connector renews its own certificate at two thirds of its life
(lienthong.cert_renewal, a CSR signed with the subsystem's client key) and reloads the live contexts built here:
new handshakes present the new certificate, open connections carry on.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import ssl
from pathlib import Path
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from lienthong import pki
from lienthong.problem import Problem

PEER_STATE = "lienthong.tls_peer"  # scope["state"] key: the pki.Peer of the connection (None: no certificate)
_MISSING = object()
# The server contexts this process built, by TLS directory: what a renewal reloads.
_LIVE: dict[Path, list[ssl.SSLContext]] = {}


class PeerProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, recording the TLS peer's certificate for the requests of its connection."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # one parse per connection; uvicorn copies app_state into each request's scope["state"]
        self.app_state = {**self.app_state, PEER_STATE: pki.Peer.of(transport.get_extra_info("ssl_object"))}


def server_context(tls_dir: Path, config: Any = None, default: Any = None) -> ssl.SSLContext:
    """uvicorn's ssl_context_factory: the mesh's TLS 1.3 context, a client certificate required."""
    context = pki.server_context(pki.CertFiles(tls_dir), "required")
    _LIVE.setdefault(Path(tls_dir), []).append(context)
    return context


def live_contexts(tls_dir: Path) -> list[ssl.SSLContext]:
    return _LIVE.get(Path(tls_dir), [])


def uvicorn_options(tls_dir: Path | None) -> dict[str, Any]:
    """What uvicorn.run / uvicorn.Config take to serve over TLS (nothing for plain HTTP). Picklable, so that
    uvicorn's worker processes build the same context and protocol."""
    if tls_dir is None:
        return {}
    files = pki.CertFiles(tls_dir)
    # ssl_certfile only makes uvicorn treat the server as TLS; the factory builds the context
    return {"ssl_certfile": str(files.cert), "ssl_context_factory": functools.partial(server_context, tls_dir),
            "http": PeerProtocol}  # fmt: skip


def missing_files(tls_dir: Path) -> list[Path]:
    files = pki.CertFiles(tls_dir)
    return [p for p in (files.key, files.cert, files.ca) if not p.is_file()]


def check_own_certificate(tls_dir: Path, subsystem: str) -> None:
    """Start-up check: the certificate served must be the provider subsystem's (ValueError saying what it is)."""
    expected = pki.identity("subsystem", subsystem)
    found = pki.cert_identity(pki.load_cert(pki.CertFiles(tls_dir).cert))
    if found != expected:
        raise ValueError(f"{pki.CertFiles(tls_dir).cert} is a certificate for {found}, not for {expected}: the "
                         "hosting gateway refuses any other")  # fmt: skip


def peer_refusal(scope: Any, gateway: str) -> Problem | None:
    """Why this request's TLS client is not the hosting gateway `gateway`, or None when it is."""
    peer = scope.get("state", {}).get(PEER_STATE, _MISSING)
    expected = pki.identity("gateway", gateway)
    if peer is _MISSING:
        return Problem(403, "certificate-identity-mismatch", "this connector serves TLS but its server recorded no "
                       "client certificate (serve it with connectors.sdk.tls.uvicorn_options)",
                       field="certificate")  # fmt: skip
    if not isinstance(peer, pki.Peer):
        return Problem(401, "client-certificate-required", f"only {expected} may call this connector, with its "
                       "client certificate", field="certificate")  # fmt: skip
    if peer.not_after <= dt.datetime.now(dt.UTC):  # valid at the handshake, expired on a long-lived connection
        return Problem(401, "client-certificate-required", "the client certificate expired during this connection; "
                       "reconnect with the renewed one", field="certificate")  # fmt: skip
    if peer.identity != expected:
        return Problem(403, "certificate-identity-mismatch", f"the client certificate is for "
                       f"{peer.identity or 'no mesh identity'}; only {expected} may call this connector",
                       field="certificate")  # fmt: skip
    return None
