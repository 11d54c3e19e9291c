"""The mesh's PKI: its certificate authority, certificate requests, the certificates it issues, and the TLS contexts
built from them (protocol §9).

A certificate names its holder in one URI SAN, `urn:lienthong:<kind>:<id>` (`urn:lienthong:gateway:hanoi`,
`urn:lienthong:subsystem:VN/GOV/BTP/civil-registry`, `urn:lienthong:registry:<instance>`). Host names are not
checked: who is at the other end is decided by that identity against the signed snapshot, after the chain to the
mesh CA verified. TLS keys are P-256 (every TLS 1.3 stack speaks it); CSRs may carry P-256/384/521, Ed25519 or
RSA >= 2048 keys, anything weaker is refused.
"""

from __future__ import annotations

import datetime as dt
import os
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from lienthong.keys import save_private

IdentityKind = Literal["gateway", "subsystem", "registry"]
KINDS: tuple[IdentityKind, ...] = ("gateway", "subsystem", "registry")
PREFIX = "urn:lienthong:"
DEFAULT_LIFETIME = dt.timedelta(days=30)
CA_LIFETIME = dt.timedelta(days=3650)
MIN_RSA_BITS = 2048
STRONG_CURVES = (ec.SECP256R1, ec.SECP384R1, ec.SECP521R1)
RENEW_AT = 2 / 3  # of a certificate's life, as ACME clients do


class CertificateError(ValueError):
    """A CSR or certificate the mesh refuses; the message says why."""


def identity(kind: IdentityKind, ident: str) -> str:
    return f"{PREFIX}{kind}:{ident}"


def parse_identity(uri: str) -> tuple[IdentityKind, str] | None:
    if not uri.startswith(PREFIX):
        return None
    kind, _, ident = uri[len(PREFIX) :].partition(":")
    for known in KINDS:
        if kind == known and ident:
            return known, ident
    return None


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


# -- keys and files ----------------------------------------------------------------------------------------------


def new_tls_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def load_cert(path: str | os.PathLike[str]) -> x509.Certificate:
    return x509.load_pem_x509_certificate(Path(path).read_bytes())


def write_cert(cert: x509.Certificate, path: str | os.PathLike[str]) -> Path:
    """Atomically, so a process reloading its certificate never reads half a file."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(target.suffix + ".tmp")
    tmp.write_bytes(cert_pem(cert))
    os.replace(tmp, target)
    return target


@dataclass(frozen=True, slots=True)
class CertFiles:
    """Where one process keeps its TLS material: <dir>/tls.key (0600), tls.crt, and the mesh CA's ca.crt."""

    directory: Path

    @property
    def key(self) -> Path:
        return self.directory / "tls.key"

    @property
    def cert(self) -> Path:
        return self.directory / "tls.crt"

    @property
    def ca(self) -> Path:
        return self.directory / "ca.crt"

    def exists(self) -> bool:
        return self.key.exists() and self.cert.exists() and self.ca.exists()


# -- the certificate authority -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CertificateAuthority:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey

    @classmethod
    def create(cls, cert_path: Path, key_path: Path, name: str = "lienthong mesh CA") -> CertificateAuthority:
        key = new_tls_key()
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = _utcnow()
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + CA_LIFETIME)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
            )  # keyCertSign, cRLSign
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        save_private(key, key_path)
        write_cert(cert, cert_path)
        return cls(cert, key)

    @classmethod
    def load(cls, cert_path: Path, key_path: Path) -> CertificateAuthority:
        cert = load_cert(cert_path)
        key = serialization.load_pem_private_key(Path(key_path).read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey):
            raise CertificateError(f"{key_path}: the CA key must be an EC or Ed25519 key")
        if cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ) != key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo):
            raise CertificateError(f"{key_path} is not the key of {cert_path}")
        return cls(cert, key)

    def issue(
        self, csr: x509.CertificateSigningRequest, uri: str, lifetime: dt.timedelta = DEFAULT_LIFETIME,
        now: dt.datetime | None = None,
    ) -> x509.Certificate:  # fmt: skip
        """A leaf for `uri` (already checked to be the caller's) with the CSR's key; serverAuth and clientAuth."""
        if parse_identity(uri) is None:
            raise CertificateError(f"{uri!r} is not a mesh identity ({PREFIX}<kind>:<id>)")
        start = now or _utcnow()
        public = csr.public_key()
        algorithm = None if isinstance(self.key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
        return (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, uri[len(PREFIX) :][:64])]))
            .issuer_name(self.cert.subject)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(start - dt.timedelta(minutes=5))
            .not_valid_after(start + lifetime)
            .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False)
            .sign(self.key, algorithm)
        )


# -- requests ----------------------------------------------------------------------------------------------------


def make_csr(key: ec.EllipticCurvePrivateKey, uri: str) -> bytes:
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, uri[len(PREFIX) :][:64])]))
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def check_csr(pem: bytes | str) -> tuple[x509.CertificateSigningRequest, str]:
    """Parse and check a CSR: valid self-signature, a strong key, exactly one mesh identity; returns it and the URI."""
    data = pem.encode() if isinstance(pem, str) else pem
    try:
        csr = x509.load_pem_x509_csr(data)
    except ValueError as exc:
        raise CertificateError(f"not a PEM certificate request: {exc}") from None
    if not csr.is_signature_valid:
        raise CertificateError("the request's signature does not verify")
    key = csr.public_key()
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise CertificateError(f"an RSA key of {key.key_size} bits is too weak (at least {MIN_RSA_BITS})")
    elif isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, STRONG_CURVES):
            raise CertificateError(f"curve {key.curve.name} is not accepted (P-256, P-384 or P-521)")
    elif not isinstance(key, ed25519.Ed25519PublicKey):
        raise CertificateError(f"a {type(key).__name__} key is not accepted")
    try:
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise CertificateError("the request names no identity (a URI SAN urn:lienthong:<kind>:<id>)") from None
    uris = [u for u in san.get_values_for_type(x509.UniformResourceIdentifier)]
    if len(uris) != 1 or len(san) != 1 or parse_identity(uris[0]) is None:
        raise CertificateError("the request must name exactly one identity, a URI SAN urn:lienthong:<kind>:<id>")
    return csr, uris[0]


# -- certificates seen on a connection ---------------------------------------------------------------------------


def cert_identity(cert: x509.Certificate) -> str | None:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    return next((u for u in san.get_values_for_type(x509.UniformResourceIdentifier) if parse_identity(u)), None)


@dataclass(frozen=True, slots=True)
class Peer:
    """The verified certificate at the other end of a TLS connection."""

    identity: str | None
    serial: int
    not_after: dt.datetime

    @classmethod
    def of(cls, ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> Peer | None:
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        if not der:
            return None
        cert = x509.load_der_x509_certificate(der)
        return cls(cert_identity(cert), cert.serial_number, cert.not_valid_after_utc)


def renew_at(cert: x509.Certificate) -> dt.datetime:
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    return start + (end - start) * RENEW_AT


# -- TLS contexts ------------------------------------------------------------------------------------------------

ClientCerts = Literal["none", "optional", "required"]


def server_context(files: CertFiles, client_certs: ClientCerts = "optional") -> ssl.SSLContext:
    """TLS 1.3 only; a client certificate, when sent, must chain to the mesh CA. The mesh CA is the trust anchor even
    when it is an operator's intermediate (partial-chain verification), so an existing PKI's sub-CA can be the mesh's
    without trusting its whole root."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(files.cert, files.key)
    ctx.load_verify_locations(files.ca)
    ctx.verify_mode = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}[
        client_certs
    ]
    ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    return ctx


def client_context(ca: Path, files: CertFiles | None = None) -> ssl.SSLContext:
    """TLS 1.3 to a mesh peer: the chain must verify to the mesh CA; the identity is checked by the caller (the
    URI SAN against the snapshot), so host names are not."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(ca)
    ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    if files is not None:
        ctx.load_cert_chain(files.cert, files.key)
    return ctx

