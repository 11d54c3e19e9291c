"""TLS on the gateway's listening sockets (protocol §9.x): the handshake, the refusals, and the transport the HTTP
connection writes through once TLS is up.

The connection does TLS itself with an `ssl.SSLObject` over memory BIOs rather than `loop.start_tls`: it has to see
the first byte of a new connection (0x16 opens a TLS handshake record) to answer a plaintext request with a plain
`HTTP/1.1 400 tls-required`, and start_tls cannot be given bytes already read. The per-request cost is one BIO
write and one decrypting read per segment received and one encrypting write per answer, all in OpenSSL; the peer's
certificate is parsed once per connection (`pki.Peer.of`).

A failed handshake (no or an unknown CA, expired, not yet valid, a protocol below TLS 1.3) never reaches HTTP: it is
logged by its reason only (no certificate contents, no address: nothing personal) and counted in
`lienthong_gateway_tls_refusals_total{reason}`.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from typing import Any

from gateway import metrics

log = logging.getLogger("lienthong.gateway.tls")

HANDSHAKE_RECORD = 0x16  # TLS record type of a ClientHello
READ_SIZE = 256 * 1024

# OpenSSL's X509_V_ERR_* codes of a client certificate that failed verification, by the reason we count
_VERIFY_REASONS = {
    9: "not-yet-valid",  # X509_V_ERR_CERT_NOT_YET_VALID
    10: "expired",  # X509_V_ERR_CERT_HAS_EXPIRED
    18: "unknown-ca",  # DEPTH_ZERO_SELF_SIGNED_CERT
    19: "unknown-ca",  # SELF_SIGNED_CERT_IN_CHAIN
    20: "unknown-ca",  # UNABLE_TO_GET_ISSUER_CERT_LOCALLY
    21: "unknown-ca",  # UNABLE_TO_VERIFY_LEAF_SIGNATURE
    7: "bad-signature",  # CERT_SIGNATURE_FAILURE
    23: "revoked",  # CERT_REVOKED
    26: "wrong-purpose",  # INVALID_PURPOSE
}
_PROTOCOL_REASONS = ("UNSUPPORTED_PROTOCOL", "NO_PROTOCOLS_AVAILABLE", "WRONG_VERSION_NUMBER", "VERSION_TOO_LOW")


def refusal_reason(exc: ssl.SSLError) -> str:
    """A short, fixed label for a failed handshake (the metric's `reason`)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return _VERIFY_REASONS.get(exc.verify_code, "bad-certificate")
    reason = str(exc.reason or "")
    if reason in _PROTOCOL_REASONS or "PROTOCOL" in reason or "VERSION" in reason:
        return "protocol"
    if "CERTIFICATE" in reason:
        return "no-certificate" if "DID_NOT_RETURN" in reason else "bad-certificate"
    if "ALERT" in reason:
        return "client-alert"  # the client gave up, e.g. it does not trust our certificate
    return "handshake-failed"


def describe(exc: ssl.SSLError) -> str:
    """OpenSSL's words for a refusal (e.g. 'certificate has expired'), never the certificate's contents."""
    if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_message:
        return str(exc.verify_message)[:120]
    return str(exc.reason or type(exc).__name__)[:120]


LOG_EVERY = 1.0  # seconds: at most one log line per reason this often, so a scan cannot flood the log
_last_logged: dict[str, tuple[float, int]] = {}  # reason -> (when logged, refusals since, not logged)


def refused(reason: str, message: str = "") -> None:
    """Count a refusal; log it unless this reason was logged less than LOG_EVERY ago (the count says how many)."""
    metrics.TLS_REFUSALS.labels(reason).inc()
    now = time.monotonic()
    last, quiet = _last_logged.get(reason, (-LOG_EVERY, 0))
    if now - last < LOG_EVERY:
        _last_logged[reason] = (last, quiet + 1)
        return
    _last_logged[reason] = (now, 0)
    more = f" ({quiet} more since the last line)" if quiet else ""
    log.warning("TLS refused (%s)%s%s", reason, f": {message}" if message else "", more)


class TLSSession:
    """One connection's TLS state: the SSLObject between the raw transport's bytes and the HTTP parser."""

    __slots__ = ("incoming", "outgoing", "raw", "sslobj")

    def __init__(self, context: ssl.SSLContext, raw: asyncio.Transport) -> None:
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.sslobj = context.wrap_bio(self.incoming, self.outgoing, server_side=True)
        self.raw = raw

    def handshake(self, data: bytes) -> bool:
        """Feed handshake bytes; True once done. Raises ssl.SSLError when the handshake fails (its alert is sent)."""
        self.incoming.write(data)
        try:
            self.sslobj.do_handshake()
        except ssl.SSLWantReadError:
            self.flush()
            return False
        except ssl.SSLError:
            self.flush()  # the alert that tells the client why
            raise
        self.flush()
        return True

    def decrypt(self, data: bytes) -> tuple[bytes, bool]:
        """Plaintext from received bytes, and whether the client closed TLS (close_notify)."""
        if data:
            self.incoming.write(data)
        sslobj = self.sslobj
        incoming = self.incoming
        first = b""
        more: list[bytes] | None = None
        closed = False
        while True:
            if first and not incoming.pending and not sslobj.pending():
                break  # all read: spares the SSLWantReadError a last read would raise (the common case, per segment)
            try:
                chunk = sslobj.read(READ_SIZE)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                closed = True
                break
            except ssl.SSLError as exc:  # a broken record: nothing after it can be trusted
                refused("bad-record", str(exc.reason or ""))
                closed = True
                break
            if not chunk:
                closed = True
                break
            if not first:
                first = chunk
            else:
                more = more or [first]
                more.append(chunk)
        if self.outgoing.pending:  # a key update or a ticket may be owed
            self.flush()
        return (b"".join(more) if more else first), closed

    def flush(self) -> None:
        out = self.outgoing.read()
        if out and not self.raw.is_closing():
            self.raw.write(out)


class TLSTransport:
    """What the HTTP connection writes to over TLS: the raw transport's interface, bytes encrypted on the way."""

    __slots__ = ("ended", "raw", "session")

    def __init__(self, session: TLSSession) -> None:
        self.session = session
        self.raw = session.raw
        self.ended = False  # close_notify sent: nothing more can be written

    def write(self, data: bytes) -> None:
        if self.ended or self.raw.is_closing():
            return
        try:
            self.session.sslobj.write(data)
        except ssl.SSLError:  # the session broke (a bad record came in): no answer can reach the client, so close,
            self.ended = True  # rather than raise into the answer and leave the connection open with it unfinished
            self.session.flush()  # the alert that says why
            self.raw.close()
            return
        self.session.flush()

    def close(self) -> None:
        self.write_eof()
        self.raw.close()

    def can_write_eof(self) -> bool:
        return True  # TLS's half-close is close_notify: the client sees the end of the answers at once

    def write_eof(self) -> None:
        """Send close_notify (once) and keep reading: what a lingering close needs under TLS, where the client
        otherwise sees no end of the answers until the socket itself closes."""
        if self.ended or self.raw.is_closing():
            return
        self.ended = True
        try:
            self.session.sslobj.unwrap()  # close_notify, so the client knows the answers were whole
        except ssl.SSLError:
            pass  # SSLWantReadError: the client's close_notify is not needed, we do not wait for it
        self.session.flush()

    def abort(self) -> None:
        self.raw.abort()

    def is_closing(self) -> bool:
        return self.raw.is_closing()

    def pause_reading(self) -> None:
        self.raw.pause_reading()

    def resume_reading(self) -> None:
        self.raw.resume_reading()

    def get_write_buffer_size(self) -> int:
        return self.raw.get_write_buffer_size()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "ssl_object":
            return self.session.sslobj
        return self.raw.get_extra_info(name, default)
