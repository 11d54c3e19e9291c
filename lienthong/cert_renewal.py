"""Getting and renewing a process's own mesh certificate (protocol §9), the way ACME clients do.

`ensure_certificate` makes the TLS key and a CSR and asks `request` (usually the registry's POST /v1/certificates)
when the files are missing, name another identity, or are past two thirds of their life. `CertificateRenewer` is the
asyncio task a long-running process keeps: it sleeps until `pki.renew_at`, renews, and calls `load_cert_chain` on
the live SSLContexts, so new handshakes present the new certificate while open connections carry on untouched.

The TLS key is kept across renewals (a new one only when the file is missing or unusable): several worker processes
sharing one CertFiles dir then never load a key that does not match the certificate beside it.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import ssl
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from lienthong import pki
from lienthong.keys import save_private

log = logging.getLogger("lienthong.cert_renewal")

# What `request` answers: the certificate's PEM, or the registry's response {"certificate": PEM, "ca": PEM, ...}.
Issued = str | bytes | Mapping[str, Any]
Request = Callable[[bytes], Issued]
RETRY_AFTER = dt.timedelta(seconds=30)  # after a failed renewal; the old certificate serves meanwhile
MAX_SLEEP = 3600.0  # wake up now and then, so a changed clock or a certificate renewed by a sibling is noticed


class RenewalError(RuntimeError):
    """A certificate could not be obtained; the message names the files and what failed."""


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def current_certificate(files: pki.CertFiles, identity_uri: str) -> x509.Certificate | None:
    """The certificate on disk if it is this identity's, readable, with its key and CA beside it, and not yet at
    its renewal time; else None (time to ask for a new one)."""
    if not files.exists():
        return None
    try:
        cert = pki.load_cert(files.cert)
    except (OSError, ValueError):
        return None
    if pki.cert_identity(cert) != identity_uri or _now() >= pki.renew_at(cert):
        return None
    return cert


def _tls_key(files: pki.CertFiles) -> ec.EllipticCurvePrivateKey:
    """The kept TLS key, or a new P-256 one (0600) when there is none or it is not a P-256 key."""
    try:
        key = serialization.load_pem_private_key(files.key.read_bytes(), password=None)
        if isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1):
            return key
    except (OSError, ValueError):
        pass
    key = pki.new_tls_key()
    save_private(key, files.key)
    files.key.chmod(0o600)
    return key


def _spki(public: Any) -> bytes:
    return bytes(public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo))


def _split(issued: Issued) -> tuple[bytes, bytes | None]:
    if isinstance(issued, str | bytes):
        return (issued.encode() if isinstance(issued, str) else issued), None
    cert, ca = issued.get("certificate"), issued.get("ca")
    if not isinstance(cert, str):
        raise RenewalError("the registry's answer carries no certificate")
    return cert.encode(), ca.encode() if isinstance(ca, str) else None


def renew_certificate(files: pki.CertFiles, identity_uri: str, request: Request) -> x509.Certificate:
    """Ask for a new certificate for the kept key and write it (and the CA, when the answer carries it)."""
    key = _tls_key(files)
    csr = pki.make_csr(key, identity_uri)
    cert_pem, ca_pem = _split(request(csr))
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError as exc:
        raise RenewalError(f"the answer for {identity_uri} is not a PEM certificate: {exc}") from exc
    if pki.cert_identity(cert) != identity_uri:
        raise RenewalError(f"asked for {identity_uri}, got a certificate for {pki.cert_identity(cert)}")
    if _spki(cert.public_key()) != _spki(key.public_key()):
        raise RenewalError(f"the certificate for {identity_uri} is not for the key in {files.key}")
    if ca_pem is not None:
        pki.write_cert(x509.load_pem_x509_certificate(ca_pem), files.ca)
    elif not files.ca.exists():
        raise RenewalError(f"no mesh CA certificate at {files.ca}")
    pki.write_cert(cert, files.cert)
    return cert


def ensure_certificate(files: pki.CertFiles, identity_uri: str, request: Request) -> x509.Certificate:
    """The identity's certificate in `files`, asked for anew (key + CSR + `request`) when missing, for another
    identity, expired or past two thirds of its life."""
    return current_certificate(files, identity_uri) or renew_certificate(files, identity_uri, request)


class CertificateRenewer:
    """Keeps `files` renewed for `identity_uri` and reloads `contexts` after each renewal.

    start() inside a running loop, stop() at shutdown. `request` is called in a thread (it usually does HTTP).
    """

    def __init__(
        self, files: pki.CertFiles, identity_uri: str, request: Request, contexts: Iterable[ssl.SSLContext] = (),
        *, on_renewed: Callable[[x509.Certificate], None] | None = None,
    ) -> None:  # fmt: skip
        self.files = files
        self.identity_uri = identity_uri
        self.request = request
        self.contexts = list(contexts)
        self.on_renewed = on_renewed
        self._task: asyncio.Task[None] | None = None

    def reload(self) -> None:
        """New handshakes on every context use the certificate on disk; open connections keep theirs."""
        for ctx in self.contexts:
            ctx.load_cert_chain(self.files.cert, self.files.key)

    async def renew_once(self) -> x509.Certificate:
        """Renew now (unless a sibling process already did) and reload the contexts."""
        cert = current_certificate(self.files, self.identity_uri)
        if cert is None:
            cert = await asyncio.to_thread(renew_certificate, self.files, self.identity_uri, self.request)
            log.info("renewed the certificate of %s: serial %x, valid until %s", self.identity_uri,
                     cert.serial_number, cert.not_valid_after_utc.isoformat())  # fmt: skip
        self.reload()
        if self.on_renewed is not None:
            self.on_renewed(cert)
        return cert

    def _next_renewal(self) -> dt.datetime:
        try:
            return pki.renew_at(pki.load_cert(self.files.cert))
        except (OSError, ValueError):
            return _now()

    async def run(self) -> None:
        while True:
            wait = (self._next_renewal() - _now()).total_seconds()
            if wait > 0:
                await asyncio.sleep(min(wait, MAX_SLEEP))
                continue
            try:
                await self.renew_once()
                await asyncio.sleep(1.0)  # a certificate issued already past its renewal time must not spin
            except Exception as exc:  # the old certificate keeps serving; try again soon
                log.warning("renewing the certificate of %s (%s) failed: %s; retrying in %s s",
                            self.identity_uri, self.files.cert, exc, RETRY_AFTER.total_seconds())  # fmt: skip
                await asyncio.sleep(RETRY_AFTER.total_seconds())

    def start(self) -> asyncio.Task[None]:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self.run(), name=f"renew {self.identity_uri}")
        return self._task

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
