"""The mesh's certificate authority as the registry keeps it (protocol §9): ca.crt and ca.key (0600) in the registry's
data dir, made by `lienthong registry init` or taken from an operator's existing CA, and the registry's own serving
certificate (urn:lienthong:registry:VN) in <data dir>/tls, issued straight from that CA."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from lienthong import pki
from lienthong.cert_renewal import Request, ensure_certificate
from lienthong.ids import INSTANCE
from lienthong.keys import save_private

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
TLS_DIR = "tls"
REGISTRY_IDENTITY = pki.identity("registry", INSTANCE)
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([dhms])\Z")
# a certificate is valid from 5 minutes before it is issued (clock skew): with less than 3 minutes ahead, its renewal
# time (2/3 of the whole validity) would already be behind it
MIN_LIFETIME = dt.timedelta(minutes=3)
_UNITS = {"d": "days", "h": "hours", "m": "minutes", "s": "seconds"}


class CAError(Exception):
    """The CA files are missing, unreadable or do not belong together; the message names the files."""


def parse_lifetime(text: str) -> dt.timedelta:
    """'30d', '12h', '90m', '200s': how long an issued certificate lives (minutes are for tests of renewal)."""
    match = _DURATION.match(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not a duration like 30d, 12h, 90m or 45s")
    lifetime = dt.timedelta(**{_UNITS[match.group(2)]: float(match.group(1))})
    if lifetime < MIN_LIFETIME or lifetime > pki.CA_LIFETIME:
        raise ValueError(f"{text!r}: a certificate lives at least 3m and at most {pki.CA_LIFETIME.days}d")
    return lifetime


def ca_paths(data_dir: Path) -> tuple[Path, Path]:
    return data_dir / CA_CERT, data_dir / CA_KEY


def tls_files(data_dir: Path) -> pki.CertFiles:
    return pki.CertFiles(data_dir / TLS_DIR)


def has_ca(data_dir: Path) -> bool:
    return any(p.exists() for p in ca_paths(data_dir))


def init_ca(data_dir: Path, ca_cert: Path | None = None, ca_key: Path | None = None) -> pki.CertificateAuthority:
    """Create the mesh CA in `data_dir`, or copy an operator's (checked to be a pair) there; never overwrites."""
    cert_path, key_path = ca_paths(data_dir)
    existing = [str(p) for p in (cert_path, key_path) if p.exists()]
    if existing:
        raise CAError(f"the mesh CA already exists; refusing to overwrite {', '.join(existing)}")
    if (ca_cert is None) != (ca_key is None):
        raise CAError("give both --ca-cert and --ca-key, or neither (then a new mesh CA is made)")
    data_dir.mkdir(parents=True, exist_ok=True)
    if ca_cert is None or ca_key is None:
        ca = pki.CertificateAuthority.create(cert_path, key_path)
    else:
        try:
            ca = pki.CertificateAuthority.load(ca_cert, ca_key)
        except (OSError, ValueError) as exc:
            raise CAError(f"cannot use the CA {ca_cert} with key {ca_key}: {exc}") from exc
        try:
            basic: x509.BasicConstraints | None = ca.cert.extensions.get_extension_for_class(
                x509.BasicConstraints
            ).value
        except x509.ExtensionNotFound:
            basic = None
        if basic is None or not basic.ca:
            raise CAError(f"{ca_cert} is not a CA certificate (basicConstraints CA:TRUE)")
        save_private(ca.key, key_path)
        pki.write_cert(ca.cert, cert_path)
    key_path.chmod(0o600)
    return ca


def load_ca(data_dir: Path) -> pki.CertificateAuthority:
    cert_path, key_path = ca_paths(data_dir)
    if not cert_path.exists() or not key_path.exists():
        raise CAError(f"no mesh CA ({cert_path}, {key_path}); run `lienthong registry init --data-dir {data_dir}`")
    try:
        return pki.CertificateAuthority.load(cert_path, key_path)
    except (OSError, ValueError) as exc:
        raise CAError(f"the mesh CA {cert_path} / {key_path} cannot be used: {exc}") from exc


@dataclass(frozen=True, slots=True)
class Issuer:
    """Signs checked CSRs with the mesh CA for `lifetime`."""

    ca: pki.CertificateAuthority
    lifetime: dt.timedelta = pki.DEFAULT_LIFETIME

    @property
    def ca_pem(self) -> str:
        return pki.cert_pem(self.ca.cert).decode()

    def issue(self, csr: x509.CertificateSigningRequest, uri: str) -> x509.Certificate:
        return self.ca.issue(csr, uri, self.lifetime)

    def local_request(self) -> Request:
        """The registry's own renewal: no HTTP, the CSR is checked and signed right here."""

        def request(csr_pem: bytes) -> dict[str, str]:
            csr, uri = pki.check_csr(csr_pem)
            return {"certificate": pki.cert_pem(self.issue(csr, uri)).decode(), "ca": self.ca_pem}

        return request


def ensure_own_certificate(files: pki.CertFiles, issuer: Issuer) -> x509.Certificate:
    """The registry's serving certificate (default in <data dir>/tls), issued or renewed from the CA when due."""
    return ensure_certificate(files, REGISTRY_IDENTITY, issuer.local_request())
