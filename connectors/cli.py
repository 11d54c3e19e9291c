"""`lienthong connector serve NAME` (or `--module MODULE:ATTR`): run one connector; `lienthong connector list`: the
connectors installed.

Connectors are plugins (connectors.sdk.discovery): NAME is an entry point of the `lienthong.connectors` group, which
lienthong's own four connectors (population, business-registry, insurance, civil-status) and any installed connector
package declare; `--module my_province.land:CONNECTOR` serves a ConnectorDefinition that is importable but not
installed. A connector that cannot serve (an invalid OpenAPI document, an operationId without a handler, a handler
without an operationId) stops at start with every such piece named (connectors.sdk.validation.check_connector).

It serves HTTPS with the certificate in --tls-dir (default var/connectors/NAME/tls: tls.key, tls.crt, ca.crt) and
accepts only the hosting gateway's client certificate (connectors.sdk.tls); --insecure-http serves plain HTTP for
local development, with a warning at every start. With --registry/--key/--kid it registers its own service
(connectors.sdk.registration)."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from connectors.scaffold import register_new
from connectors.sdk import discovery
from connectors.sdk.definition import ConnectorDefinition

DEFAULT_HOME = Path("var")
DEFAULT_REGISTRY_CA = DEFAULT_HOME / "registry" / "ca.crt"  # where `lienthong registry init` writes the mesh CA


def available() -> list[str]:
    """The names of the installed connectors (entry points of the `lienthong.connectors` group)."""
    return discovery.available()


def definition(name: str) -> ConnectorDefinition:
    """The installed connector NAME."""
    return discovery.load(name)


def _target(name: str | None, module: str | None) -> str:
    """MODULE:ATTR of the connector to serve, from exactly one of NAME and --module."""
    if name is not None and module is not None:
        raise click.UsageError("give NAME or --module MODULE:ATTR, not both")
    if name is None and module is None:
        installed = ", ".join(available()) or "none"
        raise click.UsageError(f"name the connector to serve: NAME (installed: {installed}) or --module MODULE:ATTR")
    if module is not None:
        return module
    try:
        return discovery.find(str(name)).target
    except discovery.DiscoveryError as exc:
        raise click.BadParameter(str(exc), param_hint="NAME") from None


def _load_checked(target: str, name: str | None) -> ConnectorDefinition:
    """The connector at `target`, refused with every missing piece named when it cannot serve."""
    from connectors.sdk.validation import ConnectorUnusable, check_connector

    try:
        served = discovery.load(name) if name is not None else discovery.load_target(target)
    except discovery.DiscoveryError as exc:
        raise click.ClickException(str(exc)) from None
    try:
        check_connector(served)
    except ConnectorUnusable as exc:
        raise click.ClickException(str(exc)) from None
    return served


def register(group: click.Group) -> None:
    """Add this part's commands to the top-level group."""
    group.add_command(connector)
    register_new(connector)  # `connector new`: the scaffold of a province's own connector package


@click.group()
def connector() -> None:
    """Connectors: the national databases' and provinces' APIs behind their hosting gateway."""


@connector.command("list")
@click.option("--json", "as_json", is_flag=True, help="print a JSON list instead of a table")
def list_connectors(as_json: bool) -> None:
    """The installed connectors: NAME, the MODULE:ATTR of its definition and the package (and folder) declaring it."""
    found = discovery.sources()
    if as_json:
        import orjson

        click.echo(orjson.dumps([s.as_dict() for s in found], option=orjson.OPT_INDENT_2).decode())
        return
    if not found:
        click.echo(f"no connector installed (entry point group {discovery.GROUP})")
        return
    rows = [("NAME", "MODULE", "FROM"), *((s.name, s.target, f"{s.distribution} ({s.location})") for s in found)]
    widths = [max(len(r[i]) for r in rows) for i in range(2)]
    for r in rows:
        click.echo(f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]}")


@connector.command("serve")
@click.argument("name", required=False)
@click.option(
    "--module",
    "module",
    default=None,
    metavar="MODULE:ATTR",
    help="serve the ConnectorDefinition at this import path instead of an installed NAME, "
    "e.g. my_province.land:CONNECTOR (its folder on PYTHONPATH)",
)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8801, show_default=True, type=int)
@click.option(
    "--database-url",
    envvar="DATABASE_URL",
    default=None,
    help="SQLAlchemy URL [env DATABASE_URL; default the file `lienthong data generate` writes in var/data]",
)
@click.option("--registry", "registry_url", default=None, help="registry base URL, to register and fetch gateway keys")
@click.option("--gateway", required=True, help="code of the hosting gateway, the only caller accepted")
@click.option(
    "--key",
    "key_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="PEM integrator key of the provider subsystem (registry calls)",
)
@click.option("--kid", default=None, help="key id of --key as registered in the registry")
@click.option(
    "--public-url",
    default=None,
    help="URL the gateway reaches this connector at [default https://HOST:PORT; http:// with --insecure-http]",
)
@click.option(
    "--gateway-keys",
    "gateway_keys",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="JSON list of the gateway's public JWKs (offline; instead of the registry)",
)
@click.option(
    "--tls-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="tls.key, tls.crt (the provider subsystem's certificate) and ca.crt (the mesh CA) "
    "[default: var/connectors/NAME/tls]",
)
@click.option(
    "--insecure-http",
    is_flag=True,
    help="serve plain HTTP, accepting any caller with a valid assertion: local development only",
)
@click.option(
    "--registry-ca",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help=f"the mesh CA certificate an https --registry is verified with [default: {DEFAULT_REGISTRY_CA}]",
)
@click.option("--workers", default=1, show_default=True, type=int)
@click.option("--log-level", default="info", show_default=True)
def serve(
    name: str | None,
    module: str | None,
    host: str,
    port: int,
    database_url: str | None,
    registry_url: str | None,
    gateway: str,
    key_path: Path | None,
    kid: str | None,
    public_url: str | None,
    gateway_keys: Path | None,
    tls_dir: Path | None,
    insecure_http: bool,
    registry_ca: Path | None,
    workers: int,
    log_level: str,
) -> None:
    """Serve connector NAME (see `lienthong connector list`), or the one at --module, with uvicorn. It registers its
    own service in the registry when --registry/--key/--kid are given, and accepts only assertions signed by
    --gateway (keys from the registry or --gateway-keys)."""
    import uvicorn

    from connectors.sdk.config import ConnectorConfig, default_database_url
    from lienthong import ids

    target = _target(name, module)
    served = _load_checked(target, name)
    name = served.name

    try:
        ids.validate("gateway", gateway, "--gateway")
    except ids.InvalidIdentifier as exc:
        raise click.BadParameter(exc.reason, param_hint="--gateway") from None
    if gateway_keys is None and not (registry_url and key_path and kid):
        raise click.UsageError("give --gateway-keys FILE, or --registry with --key and --kid to fetch the gateway keys")
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    tls = None if insecure_http else _tls_dir(name, tls_dir, served.subsystem)
    if tls is None:
        logging.getLogger("lienthong.connector").warning(
            "connector %s serves plain HTTP (--insecure-http): any process that can reach %s:%d sees its data in "
            "clear and no client certificate is asked; for local development only", name, host, port
        )  # fmt: skip
    if registry_url and registry_url.lower().startswith("https:"):
        registry_ca = registry_ca or DEFAULT_REGISTRY_CA
        if not registry_ca.is_file():
            raise click.UsageError(f"no mesh CA certificate at {registry_ca} to verify {registry_url} with; pass "
                                   "--registry-ca (the registry's ca.crt)")  # fmt: skip
    else:
        registry_ca = None
    config = ConnectorConfig(
        gateway=gateway,
        database_url=database_url or default_database_url(name),
        registry_url=registry_url,
        key_path=key_path,
        kid=kid,
        public_url=public_url or f"{'http' if tls is None else 'https'}://{host}:{port}",
        gateway_keys_path=gateway_keys,
        tls_dir=tls,
        registry_ca=registry_ca,
    )
    from connectors.sdk.app import build_app
    from connectors.sdk.tls import uvicorn_options

    # build once here so configuration errors show before the server starts
    app = build_app(served, config)
    tls_options = uvicorn_options(tls)
    if workers > 1:
        # uvicorn's workers need an import string: hand the config over through the environment
        import os

        os.environ["LIENTHONG_CONNECTOR"] = target
        os.environ["LIENTHONG_CONNECTOR_CONFIG"] = _config_json(config)
        uvicorn.run(
            "connectors.cli:app_from_env",
            host=host,
            port=port,
            workers=workers,
            factory=True,
            log_level=log_level,
            lifespan="on",
            access_log=False,
            **tls_options,
        )
    else:
        # no access log: request paths carry personal IDs, and the gateways keep the audit record of every call
        uvicorn.run(app, host=host, port=port, log_level=log_level, lifespan="on", access_log=False, **tls_options)


def _tls_dir(name: str, given: Path | None, subsystem: str) -> Path:
    """The TLS directory to serve with: its files must be there, and its certificate the provider subsystem's."""
    from connectors.sdk.tls import check_own_certificate, missing_files

    directory = given or DEFAULT_HOME / "connectors" / name / "tls"
    missing = missing_files(directory)
    if missing:
        raise click.UsageError(
            f"connector {name} serves HTTPS but {', '.join(str(p) for p in missing)} is missing: get a certificate "
            f"for urn:lienthong:subsystem:{subsystem} into {directory} (`lienthong connector cert {name} --subsystem "
            f"{subsystem} --key <a client key of {subsystem}>`), or pass --insecure-http for local development"
        )
    try:
        check_own_certificate(directory, subsystem)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    return directory


def _config_json(config: object) -> str:
    import dataclasses

    import orjson

    return orjson.dumps(dataclasses.asdict(config), default=str).decode()  # type: ignore[call-overload]


def app_from_env() -> object:
    """uvicorn factory for --workers N: rebuild the app from the environment set by `serve`."""
    import os

    import orjson

    from connectors.sdk.app import build_app
    from connectors.sdk.config import ConnectorConfig

    raw = orjson.loads(os.environ["LIENTHONG_CONNECTOR_CONFIG"])
    for key in ("key_path", "gateway_keys_path", "tls_dir", "registry_ca"):
        if raw.get(key):
            raw[key] = Path(raw[key])
    return build_app(discovery.load_target(os.environ["LIENTHONG_CONNECTOR"]), ConnectorConfig(**raw))
