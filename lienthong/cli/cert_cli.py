"""`lienthong gateway cert`, `lienthong connector cert` and `lienthong client cert` (protocol §9): make a TLS key and a
CSR, send it to the registry signed with the key the registry already holds for the identity, and write the
certificate and the mesh CA into a CertFiles dir (tls.key, tls.crt, ca.crt).

Registered into the `gateway` and `connector` groups of their parts and a `client` group by lienthong/cli/__init__.py.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from gateway.settings import KEY_FILE
from lienthong.home import home_option

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_REGISTRY = "https://127.0.0.1:8600"


def common_options(fn: F) -> F:
    """--home, --registry, --registry-ca and --force: where things live and which registry signs."""
    opts = [
        home_option("Folder for data, keys and logs."),
        click.option("--registry", "registry_url", envvar="LIENTHONG_REGISTRY_URL", default=DEFAULT_REGISTRY,
                     show_default=True, help="Registry base URL (env LIENTHONG_REGISTRY_URL)."),
        click.option("--registry-ca", type=click.Path(dir_okay=False, path_type=Path), default=None,
                     envvar="LIENTHONG_REGISTRY_CA",
                     help="The mesh CA certificate the registry is verified with [default: <home>/registry/ca.crt]."),
        click.option("--force", is_flag=True,
                     help="Ask for a new certificate even if the current one is not yet at 2/3 of its life."),
    ]  # fmt: skip
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def obtain(
    *, tls_dir: Path, identity_uri: str, key_path: Path, kid: str | None, iss: str, registry_url: str,
    registry_ca: Path | None, home: Path, force: bool,
) -> None:  # fmt: skip
    """Ask the registry for `identity_uri`'s certificate (unless the one in tls_dir is still good), print where."""
    from lienthong import pki
    from lienthong.cert_renewal import RenewalError, current_certificate, renew_certificate
    from registry.cli import CA_FILE, registry_ca_file
    from registry.client import RegistryClient, RegistryError

    files = pki.CertFiles(tls_dir)
    held = None if force else current_certificate(files, identity_uri)
    if held is not None:
        click.echo(f"{files.cert}: {identity_uri}, serial {held.serial_number:x}, valid until "
                   f"{held.not_valid_after_utc.isoformat()} (not yet due for renewal; --force renews)")  # fmt: skip
        return
    if not key_path.is_file():
        raise click.ClickException(f"no key file {key_path} to sign the certificate request with; pass --key")
    ca = registry_ca_file(registry_url, registry_ca, home / "registry" / CA_FILE)
    try:
        client = RegistryClient(registry_url, key_path, kid, iss, ca=ca)
    except ValueError as exc:
        raise click.ClickException(f"{key_path}: {exc}") from exc
    with client:
        try:
            cert = renew_certificate(files, identity_uri, client.request_certificate)
        except RegistryError as exc:
            raise click.ClickException(f"the registry {registry_url} refused the request signed with {key_path} "
                                       f"(kid {client.kid}): {exc}") from exc  # fmt: skip
        except (RenewalError, OSError, ValueError) as exc:
            raise click.ClickException(f"{identity_uri} from {registry_url} into {tls_dir}: {exc}") from exc
    click.echo(f"certificate: {files.cert}   ({identity_uri}, serial {cert.serial_number:x}, valid until "
               f"{cert.not_valid_after_utc.isoformat()})")  # fmt: skip
    click.echo(f"TLS key:     {files.key}   (mode 0600)")
    click.echo(f"mesh CA:     {files.ca}")


def _subsystem(value: str) -> str:
    from lienthong import ids

    try:
        return ids.validate("subsystem", value, "--subsystem")
    except ids.InvalidIdentifier as exc:
        raise click.BadParameter(exc.reason, param_hint="--subsystem") from exc


@click.command("cert")
@click.option("--code", envvar="LIENTHONG_GATEWAY_CODE", required=True, help="This gateway's code, e.g. national.")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), envvar="LIENTHONG_DATA_DIR",
              default=None, help="The gateway's data dir [default: <home>/gateways/<code>].")  # fmt: skip
@click.option(
    "--key",
    "key_file",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="LIENTHONG_GATEWAY_KEY",
    default=None,
    help="The gateway's private key the registry holds [default: <data-dir>/gateway.key].",
)
@click.option("--kid", envvar="LIENTHONG_GATEWAY_KID", default=None, help="Key id of --key [default: its thumbprint].")
@click.option("--tls-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where to write tls.key, tls.crt and ca.crt [default: <data-dir>/tls].")  # fmt: skip
@common_options
def gateway_cert(
    code: str, data_dir: Path | None, key_file: Path | None, kid: str | None, tls_dir: Path | None, home: Path,
    registry_url: str, registry_ca: Path | None, force: bool,
) -> None:  # fmt: skip
    """Get this gateway's TLS certificate (urn:lienthong:gateway:CODE) from the registry, signing the request with
    the gateway's own key."""
    from lienthong import ids, pki

    try:
        ids.validate("gateway", code, "--code")
    except ids.InvalidIdentifier as exc:
        raise click.BadParameter(exc.reason, param_hint="--code") from exc
    root = home
    data = data_dir or root / "gateways" / code
    obtain(tls_dir=tls_dir or data / "tls", identity_uri=pki.identity("gateway", code),
           key_path=key_file or data / KEY_FILE, kid=kid, iss=f"gateway:{code}", registry_url=registry_url,
           registry_ca=registry_ca, home=root, force=force)  # fmt: skip


@click.command("cert")
@click.argument("name")
@click.option("--subsystem", required=True, help="The subsystem providing its service.")
@click.option("--key", "key_file", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="A client key of that subsystem the registry holds (PEM).")  # fmt: skip
@click.option("--kid", default=None, help="Key id of --key in the registry [default: its thumbprint].")
@click.option("--tls-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where to write tls.key, tls.crt and ca.crt [default: <home>/connectors/NAME/tls].")  # fmt: skip
@common_options
def connector_cert(
    name: str, subsystem: str, key_file: Path, kid: str | None, tls_dir: Path | None, home: Path,
    registry_url: str, registry_ca: Path | None, force: bool,
) -> None:  # fmt: skip
    """Get connector NAME's TLS certificate (urn:lienthong:subsystem:<its provider>) from the registry, signing the
    request with a client key of that subsystem."""
    from lienthong import pki

    sub = _subsystem(subsystem)
    root = home
    obtain(tls_dir=tls_dir or root / "connectors" / name / "tls", identity_uri=pki.identity("subsystem", sub),
           key_path=key_file, kid=kid, iss=sub, registry_url=registry_url, registry_ca=registry_ca, home=root,
           force=force)  # fmt: skip


@click.group("client")
def client_group() -> None:
    """A client system's TLS certificate, X-Road's way to authenticate at its home gateway."""


@client_group.command("cert")
@click.option("--subsystem", required=True, help="The client subsystem, VN/CLASS/MEMBER/SUBSYSTEM.")
@click.option("--key", "key_file", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="A client key of that subsystem the registry holds (PEM).")  # fmt: skip
@click.option("--kid", default=None, help="Key id of --key in the registry [default: its thumbprint].")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Where to write tls.key, tls.crt and ca.crt (`lienthong call --tls-dir`).")  # fmt: skip
@common_options
def client_cert(
    subsystem: str, key_file: Path, kid: str | None, out_dir: Path, home: Path, registry_url: str,
    registry_ca: Path | None, force: bool,
) -> None:  # fmt: skip
    """Get a client system's TLS certificate (urn:lienthong:subsystem:S) from the registry, signing the request with
    one of S's client keys."""
    from lienthong import pki

    sub = _subsystem(subsystem)
    obtain(tls_dir=out_dir, identity_uri=pki.identity("subsystem", sub), key_path=key_file, kid=kid, iss=sub,
           registry_url=registry_url, registry_ca=registry_ca, home=home, force=force)  # fmt: skip


def register(group: click.Group) -> None:
    """Add the cert commands to the `gateway` and `connector` groups (registered before this) and a `client` group."""
    for parent, command in (("gateway", gateway_cert), ("connector", connector_cert)):
        target = group.commands.get(parent)
        if isinstance(target, click.Group):
            target.add_command(command)
    existing = group.commands.get("client")
    if isinstance(existing, click.Group):
        existing.add_command(client_cert)
    else:
        group.add_command(client_group)
