"""Commands of the registry part: `lienthong registry init|serve` here, and the admin commands, which all go through
the registry's API (never around it): registry/cli_parties.py (members, subsystems, gateways, keys),
registry/cli_services.py (services, catalog) and registry/cli_grants.py (clients, grants, purposes, snapshot), with
what they share (--home, the client, errors, tables) in registry/cli_common.py."""

from __future__ import annotations

import os
from pathlib import Path

import click

from registry import keyfiles
from registry.cli_common import CA_FILE, registry_ca_file

__all__ = ["CA_FILE", "register", "registry_ca_file"]  # the CA helpers: gateway/cli.py and lienthong/cli/cert_cli.py

DEFAULT_DATA_DIR = "var/registry"


@click.group("registry")
def registry_group() -> None:
    """Run the shared service registry."""


@registry_group.command("init")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path),
              default=lambda: os.environ.get("LIENTHONG_REGISTRY_DATA_DIR", DEFAULT_DATA_DIR), show_default=True,
              help="where the registry keeps its keys and the mesh CA")  # fmt: skip
@click.option("--ca-cert", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="an existing CA certificate (PEM) to be the mesh CA, with --ca-key [default: a new CA]")  # fmt: skip
@click.option("--ca-key", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="the private key (PEM, EC or Ed25519) of --ca-cert; copied to the data dir, mode 0600")  # fmt: skip
def init_cmd(data_dir: Path, ca_cert: Path | None, ca_key: Path | None) -> None:
    """Create the registry's signing key, the first admin key and the mesh CA (once; never overwrites), and issue the
    registry's own serving certificate into <data-dir>/tls.

    A data dir initialised before the mesh had a CA gets its CA on a second run."""
    from registry import mesh_ca

    result = None
    files = mesh_ca.tls_files(data_dir)
    try:
        result = keyfiles.init(data_dir, ca_cert, ca_key)
    except keyfiles.AlreadyInitialised as exc:
        if mesh_ca.has_ca(data_dir):
            raise click.ClickException(str(exc)) from exc
        try:  # a data dir made before the mesh had a CA gets one now
            mesh_ca.ensure_own_certificate(files, mesh_ca.Issuer(mesh_ca.init_ca(data_dir, ca_cert, ca_key)))
        except mesh_ca.CAError as err:
            raise click.ClickException(str(err)) from err
    except mesh_ca.CAError as exc:
        raise click.ClickException(str(exc)) from exc
    if result is not None:
        click.echo(f"registry signing key:  {result.signing_key}")
        click.echo(f"registry public JWK:   {result.signing_pub}   (give this to every gateway at install time)")
        click.echo(f"admin key:             {result.admin_key}   (kid {result.admin_kid}, iss 'admin')")
        click.echo(f"admin public JWK:      {result.admin_pub}")
    cert_path, key_path = mesh_ca.ca_paths(data_dir)
    click.echo(f"mesh CA certificate:   {cert_path}   (give this to every process at install time: --registry-ca)")
    click.echo(f"mesh CA key:           {key_path}   (mode 0600; keep it secret)")
    click.echo(f"registry TLS files:    {files.directory}   ({mesh_ca.REGISTRY_IDENTITY})")


@registry_group.command("serve")
@click.option("--host", default=lambda: os.environ.get("LIENTHONG_REGISTRY_HOST", "127.0.0.1"), show_default=True)
@click.option("--port", type=int, default=lambda: int(os.environ.get("LIENTHONG_REGISTRY_PORT", "8600")),
              show_default=True)  # fmt: skip
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path),
              default=lambda: os.environ.get("LIENTHONG_REGISTRY_DATA_DIR", DEFAULT_DATA_DIR),
              show_default=True)  # fmt: skip
@click.option("--redis-url", default=lambda: os.environ.get("REDIS_URL"),
              help="Redis to use (env REDIS_URL); without it an embedded, durable redis-server is used")  # fmt: skip
@click.option("--redis-dir", type=click.Path(file_okay=False, path_type=Path), default="var/redis", show_default=True,
              help="data dir of the embedded Redis")  # fmt: skip
@click.option("--upstream-allow", default=None, metavar="HOST[:PORT],...",
              help="upstream addresses allowed although loopback, link-local, metadata or the mesh's own: IPs, "
                   "CIDRs or names, e.g. 127.0.0.1:8801 (env LIENTHONG_UPSTREAM_ALLOW; default: none)")  # fmt: skip
@click.option("--max-endpoints", type=click.IntRange(min=1), default=None,
              help="operations per service document (env LIENTHONG_MAX_ENDPOINTS; default 500)")  # fmt: skip
@click.option(
    "--max-document-bytes",
    type=click.IntRange(min=1),
    default=None,
    help="size of a service's OpenAPI document as JSON (env LIENTHONG_MAX_DOCUMENT_BYTES; default 262144)",
)
@click.option(
    "--max-services-per-member",
    type=click.IntRange(min=1),
    default=None,
    help="services one member may register (env LIENTHONG_MAX_SERVICES_PER_MEMBER; default 200)",
)
@click.option("--tls-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="the registry's TLS files (tls.key, tls.crt, ca.crt) [default: <data-dir>/tls, issued from the "
                   "mesh CA and renewed at 2/3 of their life]")  # fmt: skip
@click.option("--insecure-http", is_flag=True, envvar="LIENTHONG_INSECURE_HTTP",
              help="serve plain HTTP, not HTTPS: for local development only (logs a warning at start)")  # fmt: skip
@click.option("--cert-lifetime", default=lambda: os.environ.get("LIENTHONG_CERT_LIFETIME", "30d"), show_default="30d",
              help="lifetime of the certificates it issues, e.g. 30d, 12h (env LIENTHONG_CERT_LIFETIME)")  # fmt: skip
def serve_cmd(
    host: str, port: int, data_dir: Path, redis_url: str | None, redis_dir: Path, upstream_allow: str | None,
    max_endpoints: int | None, max_document_bytes: int | None, max_services_per_member: int | None,
    tls_dir: Path | None, insecure_http: bool, cert_lifetime: str,
) -> None:  # fmt: skip
    """Serve the registry API under /v1 over HTTPS (TLS 1.3; Swagger UI at /v1/ui, health at /healthz)."""
    from registry.mesh_ca import parse_lifetime
    from registry.serve import NotInitialised, serve
    from registry.settings import RegistrySettings

    try:
        lifetime = parse_lifetime(cert_lifetime)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--cert-lifetime") from exc

    try:
        settings = RegistrySettings.from_options(
            upstream_allow, max_endpoints, max_document_bytes, max_services_per_member
        )
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--upstream-allow / --max-*") from exc
    try:
        serve(host, port, data_dir, redis_url, redis_dir, settings, tls_dir=tls_dir, insecure_http=insecure_http,
              cert_lifetime=lifetime)  # fmt: skip
    except NotInitialised as exc:
        raise click.ClickException(str(exc)) from exc


def register(group: click.Group) -> None:
    """Add this part's commands to the top-level group."""
    from registry.cli_grants import clients_group, grants_group, purposes_group, snapshot_group
    from registry.cli_parties import gateways_group, keys_group, members_group, subsystems_group
    from registry.cli_services import catalog_group, services_group

    for command in (registry_group, members_group, subsystems_group, gateways_group, services_group, keys_group,
                    clients_group, grants_group, purposes_group, snapshot_group, catalog_group):  # fmt: skip
        group.add_command(command)
