"""The TLS cases' certificates: a bench CA of its own and one certificate per process, issued directly with the mesh's
PKI (lienthong.pki; bench is test tooling, so nothing goes through the registry's CSR API).

Every certificate names its holder as the mesh does (protocol §9): the echo upstream is the bench service's provider
subsystem, which is what a gateway expects of the connector it calls; each gateway is urn:lienthong:gateway:CODE;
nginx's TLS proxy stands where a gateway stands; the load generator holds the consumer's subsystem certificate.
A process gets a pki.CertFiles directory (tls.key, tls.crt, ca.crt), the layout its --tls-dir reads.

nginx can check an upstream's certificate only by a host name (proxy_ssl_name cuts a name at its first colon, so not
even the CN, `subsystem:...`, can be matched), so the upstream's certificate also carries a DNS name, UPSTREAM_NAME,
that nginx's TLS proxy checks where a gateway checks the URI SAN; the gateway reads only the URI SAN.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ed25519

from lienthong import pki

UPSTREAM_NAME = "echo.bench.lienthong"  # what nginx checks of the upstream's certificate (module docstring)
ECHO_PROVIDER = "VN/GOV/BENCH/echo"  # the provider subsystem of the bench service (bench/mesh.py BENCH_SERVICE)
NGINX_PROXY = pki.identity("gateway", "nginx")  # nginx's proxy is a hop, as a gateway is


@dataclass
class BenchPKI:
    """The bench CA in `root`, and the certificate directories issued from it (each once, by name)."""

    root: Path
    issued: dict[str, pki.CertFiles] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from tests.upstream_tls_support import IssuingCA  # the tests' issuer: one way to issue a CertFiles dir

        self.ca = IssuingCA.make(self.root, "lienthong bench CA")

    @property
    def ca_path(self) -> Path:
        return self.ca.cert_path

    def files(self, name: str, uri: str) -> pki.CertFiles:
        if name not in self.issued:
            self.issued[name] = self.ca.issue(name, uri)
        return self.issued[name]

    def upstream(self) -> pki.CertFiles:
        if "upstream" not in self.issued:
            files = self.files("upstream", pki.identity("subsystem", ECHO_PROVIDER))
            pki.write_cert(with_dns_name(self.ca.ca, pki.load_cert(files.cert), UPSTREAM_NAME), files.cert)
        return self.issued["upstream"]

    def nginx_proxy(self) -> pki.CertFiles:
        return self.files("nginx-proxy", NGINX_PROXY)

    def gateway(self, code: str) -> pki.CertFiles:
        return self.files(f"gateway-{code}", pki.identity("gateway", code))

    def client(self, subsystem: str) -> pki.CertFiles:
        return self.files("client-" + subsystem.replace("/", "_"), pki.identity("subsystem", subsystem))

    def context(self, files: pki.CertFiles | None = None) -> ssl.SSLContext:
        """A client's TLS 1.3 context: the bench CA, and `files`' certificate when given."""
        return pki.client_context(self.ca_path, files)


def with_dns_name(ca: pki.CertificateAuthority, cert: x509.Certificate, name: str) -> x509.Certificate:
    """`cert` signed again by `ca` with `name` added to its SANs; everything else as it was."""
    builder = (
        x509.CertificateBuilder().subject_name(cert.subject).issuer_name(cert.issuer).public_key(cert.public_key())
        .serial_number(cert.serial_number).not_valid_before(cert.not_valid_before_utc)
        .not_valid_after(cert.not_valid_after_utc)
    )  # fmt: skip
    for ext in cert.extensions:
        value = ext.value
        if isinstance(value, x509.SubjectAlternativeName):
            value = x509.SubjectAlternativeName([*value, x509.DNSName(name)])
        builder = builder.add_extension(value, ext.critical)
    return builder.sign(ca.key, None if isinstance(ca.key, ed25519.Ed25519PrivateKey) else hashes.SHA256())


def wait_https(url: str, context: ssl.SSLContext, alive: Callable[[], str | None], timeout: float = 60.0) -> None:
    """Until `url` answers 200 over TLS; `alive` returns why the server is gone (it exited), else None."""
    deadline = time.monotonic() + timeout
    last = "no answer yet"
    while time.monotonic() < deadline:
        gone = alive()
        if gone:
            raise RuntimeError(gone)
        try:
            r = httpx.get(url, verify=context, timeout=2.0)
            if r.status_code == 200:
                return
            last = f"HTTP {r.status_code} {r.text[:200]}"
        except httpx.HTTPError as exc:
            last = repr(exc)
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer 200 within {timeout:.0f} s ({last})")
