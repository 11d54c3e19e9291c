"""Commands of the registry part: `lienthong registry init|serve` and the admin commands, which all go through the
registry's API (never around it)."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from registry import keyfiles

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_DATA_DIR = "var/registry"
CA_FILE = "ca.crt"  # registry.mesh_ca.CA_CERT, named here so --help does not import the PKI


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
@click.option("--max-document-bytes", type=click.IntRange(min=1), default=None,
              help="size of a service's OpenAPI document as JSON (env LIENTHONG_MAX_DOCUMENT_BYTES; default 262144)")
@click.option("--max-services-per-member", type=click.IntRange(min=1), default=None,
              help="services one member may register (env LIENTHONG_MAX_SERVICES_PER_MEMBER; default 200)")
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


def _echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, ensure_ascii=False))


# ---- admin commands over the API --------------------------------------------------------------------------------


def api_options(fn: F) -> F:
    """--registry, --key, --kid and --as: who talks to which registry (default: the local admin key)."""
    opts = [
        click.option("--registry", "registry_url", envvar="LIENTHONG_REGISTRY_URL", default="https://127.0.0.1:8600",
                     show_default=True, help="registry base URL (env LIENTHONG_REGISTRY_URL)"),
        click.option("--key", "auth_key", type=click.Path(dir_okay=False, path_type=Path), default=None,
                     help=f"private key (PEM) to sign with [default: {DEFAULT_DATA_DIR}/admin.key]"),
        click.option("--kid", default=None, help="key id registered for --key [default: its thumbprint]"),
        click.option("--as", "issuer", default="admin", show_default=True,
                     help="token issuer: 'admin', a subsystem id (integrator) or gateway:CODE"),
        click.option("--registry-ca", type=click.Path(dir_okay=False, path_type=Path), default=None,
                     help=f"the mesh CA certificate an https registry is verified with "
                          f"[default: {DEFAULT_DATA_DIR}/{CA_FILE}]"),
    ]  # fmt: skip
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def _client(
    registry_url: str, auth_key: Path | None, kid: str | None, issuer: str, registry_ca: Path | None = None
) -> Any:
    from registry.client import RegistryClient

    path = auth_key or Path(DEFAULT_DATA_DIR) / keyfiles.ADMIN_KEY
    if not path.exists():
        raise click.ClickException(f"no key file {path}; pass --key or run `lienthong registry init`")
    if kid is None and auth_key is None and (path.parent / keyfiles.ADMIN_PUB).exists():
        kid = keyfiles.admin_kid(path.parent)
    ca = registry_ca_file(registry_url, registry_ca, Path(DEFAULT_DATA_DIR) / CA_FILE)
    try:
        return RegistryClient(registry_url, path, kid, issuer, ca=ca)
    except ValueError as exc:
        raise click.ClickException(f"{path}: {exc}") from exc


def registry_ca_file(registry_url: str, given: Path | None, default: Path) -> Path | None:
    """The mesh CA file an https registry is verified with (None for http); a missing one names itself."""
    if not registry_url.lower().startswith("https:"):
        return None
    path = given or default
    if not path.is_file():
        raise click.ClickException(f"no mesh CA certificate at {path} to verify {registry_url} with; pass "
                                   "--registry-ca (the registry's ca.crt)")  # fmt: skip
    return path


def _run(call: Callable[[], Any]) -> Any:
    """Run one API call; a refusal prints the problem's detail and exits 1."""
    from registry.client import RegistryError

    try:
        return call()
    except RegistryError as exc:
        click.echo(f"error: {exc}", err=True)
        raise SystemExit(1) from exc


def _read_jwk(path: Path) -> dict[str, Any]:
    """A public JWK from a .jwk/.json file, or the public half of a PEM private key."""
    from lienthong import keys

    text = path.read_text()
    if text.lstrip().startswith("{"):
        try:
            jwk: dict[str, Any] = json.loads(text)
        except json.JSONDecodeError as exc:
            raise click.BadParameter(f"{path} is not valid JSON: {exc}") from exc
        return jwk
    try:
        return keys.public_jwk(keys.load_private(path))
    except ValueError as exc:
        raise click.BadParameter(f"{path} is neither a JWK nor a PEM key: {exc}") from exc


def _read_document(path: Path) -> dict[str, Any]:
    import yaml

    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise click.BadParameter(f"{path} is not JSON or YAML: {exc}") from exc
    if not isinstance(doc, dict):
        raise click.BadParameter(f"{path} does not hold an OpenAPI object")
    return doc


@click.group("members")
def members_group() -> None:
    """Members of the mesh (ministries, agencies, provinces)."""


@members_group.command("add")
@click.argument("member_id")
@click.option("--name", required=True)
@click.option("--home-gateway", required=True, help="gateway code, e.g. national or nghean")
@api_options
def members_add(member_id: str, name: str, home_gateway: str, **api: Any) -> None:
    """Add member MEMBER_ID (VN/GOV/CODE or VN/PROV/CODE)."""
    with _client(**api) as c:
        _echo_json(_run(lambda: c.add_member(member_id, name, home_gateway)))


@click.group("gateways")
def gateways_group() -> None:
    """Gateways: code, base URL and public signing keys."""


@gateways_group.command("add")
@click.argument("code")
@click.option("--base-url", required=True)
@click.option("--key-file", "key_files", multiple=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="the gateway's public JWK (or its PEM key, whose public half is sent); repeatable")  # fmt: skip
@api_options
def gateways_add(code: str, base_url: str, key_files: tuple[Path, ...], **api: Any) -> None:
    """Add gateway CODE."""
    jwks = [_read_jwk(p) for p in key_files]
    with _client(**api) as c:
        _echo_json(_run(lambda: c.add_gateway(code, base_url, jwks)))


@click.group("services")
def services_group() -> None:
    """Services and their OpenAPI documents."""


@services_group.command("register")
@click.argument("service_id")
@click.option("--openapi", "openapi_file", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="the service's OpenAPI 3 document (JSON or YAML)")  # fmt: skip
@click.option("--gateway", required=True, help="code of the hosting gateway")
@click.option("--upstream", required=True, help="upstream URL (only the hosting gateway receives it)")
@click.option("--name", default=None, help="[default: the document's info.title]")
@click.option("--description", default=None, help="[default: the document's info.description]")
@click.option("--version-label", default="v1", show_default=True)
@click.option("--timeout-ms", type=int, default=5000, show_default=True)
@api_options
def services_register(
    service_id: str,
    openapi_file: Path,
    gateway: str,
    upstream: str,
    name: str | None,
    description: str | None,
    version_label: str,
    timeout_ms: int,
    **api: Any,
) -> None:
    """Register SERVICE_ID (VN/CLASS/MEMBER/SUBSYSTEM/SERVICE); it stays disabled until an admin approves it."""
    from lienthong import ids

    try:
        ids.validate("service", service_id, "SERVICE_ID")
    except ids.InvalidIdentifier as exc:
        raise click.BadParameter(exc.reason, param_hint="SERVICE_ID") from exc
    doc = _read_document(openapi_file)
    info: dict[str, Any] = doc["info"] if isinstance(doc.get("info"), dict) else {}
    with _client(**api) as c:
        result = _run(
            lambda: c.register_service(
                service_id,
                openapi=doc,
                gateway=gateway,
                upstream_url=upstream,
                name=name or str(info.get("title") or service_id.rsplit("/", 1)[-1]),
                description=description if description is not None else str(info.get("description") or ""),
                version_label=version_label,
                timeout_ms=timeout_ms,
            )
        )
    _echo_json(result)


@services_group.command("approve")
@click.argument("service_id")
@api_options
def services_approve(service_id: str, **api: Any) -> None:
    """Approve SERVICE_ID (admin)."""
    with _client(**api) as c:
        _echo_json(_run(lambda: c.approve_service(service_id)))


@click.group("clients")
def clients_group() -> None:
    """Client keys of consumer subsystems."""


@clients_group.command("add-key")
@click.argument("subsystem_id")
@click.option("--key-file", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="public JWK (or a PEM key, whose public half is sent)")  # fmt: skip
@click.option("--key-id", default=None, help="kid to register [default: the JWK's kid, else its thumbprint]")
@api_options
def clients_add_key(subsystem_id: str, key_file: Path, key_id: str | None, **api: Any) -> None:
    """Add a client key to SUBSYSTEM_ID; rotate by adding the new key, then revoking the old."""
    jwk = _read_jwk(key_file)
    if key_id:
        jwk["kid"] = key_id
    with _client(**api) as c:
        _echo_json(_run(lambda: c.add_client_key(subsystem_id, jwk)))


@clients_group.command("revoke-key")
@click.argument("subsystem_id")
@click.argument("key_id")
@api_options
def clients_revoke_key(subsystem_id: str, key_id: str, **api: Any) -> None:
    """Revoke key KEY_ID of SUBSYSTEM_ID."""
    with _client(**api) as c:
        _echo_json(_run(lambda: c.revoke_client_key(subsystem_id, key_id)))


@click.group("grants")
def grants_group() -> None:
    """Grants: which consumer may call which service, for which purposes, seeing which fields."""


@grants_group.command("add")
@click.option("--consumer", required=True, help="consumer subsystem id")
@click.option("--service", required=True, help="service id")
@click.option("--purpose", "purposes", multiple=True, required=True, help="purpose code; repeatable")
@click.option(
    "--default-purpose",
    default=None,
    help="one of the purposes, applied to calls without X-Purpose (X-Road clients) [default: the only purpose]",
)
@click.option("--endpoint", "endpoints", multiple=True, help="'METHOD /path/{template}'; repeatable [default: all]")
@click.option("--field", "fields", multiple=True, help="dotted response field; repeatable [default: all]")
@click.option("--per-minute", type=click.IntRange(min=1), default=None)
@click.option("--per-day", type=click.IntRange(min=1), default=None)
@api_options
def grants_add(
    consumer: str,
    service: str,
    purposes: tuple[str, ...],
    default_purpose: str | None,
    endpoints: tuple[str, ...],
    fields: tuple[str, ...],
    per_minute: int | None,
    per_day: int | None,
    **api: Any,
) -> None:
    """Grant CONSUMER access to SERVICE (admin)."""
    eps: str | list[dict[str, str]] = "*"
    if endpoints:
        eps = []
        for e in endpoints:
            method, _, path = e.strip().partition(" ")
            if not path.strip().startswith("/"):
                raise click.BadParameter(f"{e!r} is not 'METHOD /path'", param_hint="--endpoint")
            eps.append({"method": method.upper(), "path": path.strip()})
    quota = {k: v for k, v in {"per_minute": per_minute, "per_day": per_day}.items() if v is not None}
    with _client(**api) as c:
        result = _run(
            lambda: c.add_grant(
                consumer,
                service,
                list(purposes),
                endpoints=eps,
                fields=list(fields) or None,
                quota=quota or None,
                default_purpose=default_purpose,
            )
        )
    _echo_json(result)


@grants_group.command("revoke")
@click.argument("grant_id")
@api_options
def grants_revoke(grant_id: str, **api: Any) -> None:
    """Revoke GRANT_ID (admin); the record stays, marked revoked."""
    with _client(**api) as c:
        _echo_json(_run(lambda: c.revoke_grant(grant_id)))


@click.group("snapshot")
def snapshot_group() -> None:
    """The signed snapshot gateways download."""


@snapshot_group.command("show")
@click.option("--gateway", default=None, help="whose snapshot (required for admins)")
@click.option("--registry-key", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help=f"registry public JWK to verify with [default: {DEFAULT_DATA_DIR}/registry.pub.jwk]")  # fmt: skip
@click.option("--raw", is_flag=True, help="print the JWS itself")
@api_options
def snapshot_show(gateway: str | None, registry_key: Path | None, raw: bool, **api: Any) -> None:
    """Fetch the snapshot, check its signature and print its document."""
    from lienthong.keys import public_key_from_jwk
    from lienthong.snapshot import SnapshotError, verify_jws

    with _client(**api) as c:
        resp = _run(lambda: c.snapshot(gateway=gateway))
    if raw:
        click.echo(resp.text)
        return
    key_path = registry_key or Path(DEFAULT_DATA_DIR) / keyfiles.SIGNING_PUB
    if not key_path.exists():
        raise click.ClickException(f"no registry public key at {key_path}; pass --registry-key")
    try:
        doc = verify_jws(resp.content, public_key_from_jwk(json.loads(key_path.read_text())))
    except SnapshotError as exc:
        raise click.ClickException(str(exc)) from exc
    _echo_json(doc)


@click.group("catalog")
def catalog_group() -> None:
    """The service catalogue: find services, read their OpenAPI documents and endpoints."""


@catalog_group.command("search")
@click.argument("text", default="")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@api_options
def catalog_search(text: str, as_json: bool, **api: Any) -> None:
    """Search services by text over names, descriptions and OpenAPI summaries (empty TEXT lists them all)."""
    items = _run(lambda: _client(**api).search(text))
    if as_json or not sys.stdout.isatty():
        _echo_json(items)
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{len(items)} services matching {text!r}" if text else f"{len(items)} services")
    for column in ("service", "version", "approved", "name"):
        table.add_column(column)
    for item in items:
        approved = "yes" if item.get("approved") else "no"
        table.add_row(str(item.get("id")), str(item.get("version_label", "")), approved, str(item.get("name", "")))
    Console().print(table)


def register(group: click.Group) -> None:
    """Add this part's commands to the top-level group."""
    for command in (registry_group, members_group, gateways_group, services_group, clients_group, grants_group,
                    snapshot_group, catalog_group):  # fmt: skip
        group.add_command(command)
