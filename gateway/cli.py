"""Commands of the gateway part: `gateway serve`, `gateway keygen`, and the client-side `keygen` and `call`."""

from __future__ import annotations

import logging
import os
import shutil
import ssl
import sys
import time
from pathlib import Path
from typing import Any

import click
import orjson

from gateway.settings import (
    DEFAULT_BODY_LIMIT,
    DEFAULT_MAX_SNAPSHOT_AGE,
    DEFAULT_TXLOG_RETENTION_DAYS,
    KEY_FILE,
    GatewaySettings,
    parse_listen,
    parse_policies,
    parse_registry_urls,
)
from gateway.workers import serve as serve_workers
from lienthong import ids, keys
from lienthong.home import home_option

OPS_URL_FILE = "ops-url"  # in the data dir: the base URL of the operations API, written by `gateway serve`
INSECURE_WARNING = ("--insecure-http: this gateway serves PLAIN HTTP, with no TLS and no client certificates; "
                    "names and personal IDs cross the network in clear. For local development only.")  # fmt: skip

log = logging.getLogger("lienthong.gateway")


def ops_url(host: str, port: int, scheme: str = "http") -> str:
    """A URL for a listen address; a wildcard address is reached on loopback."""
    host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


def check_tls_files(settings: GatewaySettings) -> None:
    """Refuse to start without the TLS material, naming what is missing and the command that makes it."""
    files = settings.cert_files
    missing = [str(p) for p in (files.key, files.cert, files.ca) if not p.exists()]
    if missing:
        raise click.UsageError(
            f"no TLS certificate for gateway {settings.code}: missing {', '.join(missing)}. Run `lienthong gateway "
            f"cert --code {settings.code}` to get one from the registry (or pass --tls-dir), or --insecure-http for "
            "plain HTTP in local development"
        )
    try:
        from lienthong.pki import server_context

        server_context(files)
    except (OSError, ValueError, ssl.SSLError) as exc:
        raise click.UsageError(f"the TLS files in {files.directory} cannot be used: {exc}") from exc


@click.group("gateway")
def gateway_group() -> None:
    """Run a gateway (the data plane) or make its key."""


@gateway_group.command("serve")
@click.option("--code", envvar="LIENTHONG_GATEWAY_CODE", required=True, help="This gateway's code, e.g. national.")
@click.option("--host", envvar="LIENTHONG_HOST", default="127.0.0.1", show_default=True)
@click.option("--port", envvar="LIENTHONG_PORT", type=int, default=8700, show_default=True)
@click.option("--registry", "registry_urls", envvar="LIENTHONG_REGISTRY_URL", required=True, multiple=True,
              help="Registry base URL; repeat it or separate by commas for several registries on one Redis, the "
                   "snapshot poll moving to the next when one fails.")  # fmt: skip
@click.option(
    "--registry-key",
    envvar="LIENTHONG_REGISTRY_KEY",
    required=True,
    type=click.Path(exists=True, dir_okay=False),
    help="The registry's public JWK (JSON file), given at install.",
)
@click.option(
    "--key",
    "key_file",
    envvar="LIENTHONG_GATEWAY_KEY",
    type=click.Path(dir_okay=False),
    help="This gateway's private key (PEM); default <data-dir>/gateway.key.",
)
@click.option("--kid", envvar="LIENTHONG_GATEWAY_KID", help="Key id of --key in the registry; default its thumbprint.")
@click.option(
    "--data-dir", envvar="LIENTHONG_DATA_DIR", type=click.Path(file_okay=False), help="Default var/gateways/<code>."
)
@click.option("--workers", envvar="LIENTHONG_WORKERS", type=click.IntRange(min=1), default=os.cpu_count() or 1,
              show_default="the number of CPUs",
              help="Worker processes sharing the port; one per core uses the whole machine.")  # fmt: skip
@click.option(
    "--max-snapshot-age",
    envvar="LIENTHONG_MAX_SNAPSHOT_AGE",
    type=float,
    default=DEFAULT_MAX_SNAPSHOT_AGE,
    show_default=True,
    help="Seconds a snapshot stays valid after the registry last confirmed it.",
)
@click.option("--policies", envvar="LIENTHONG_POLICIES", default="all", show_default=True, help="all, none or a,b,c.")
@click.option("--body-limit", envvar="LIENTHONG_BODY_LIMIT", type=int, default=DEFAULT_BODY_LIMIT, show_default=True)
@click.option("--redis-url", envvar="REDIS_URL", help="Redis for quotas and metering; default an embedded one.")
@click.option("--trace-sample-ratio", envvar="LIENTHONG_TRACE_SAMPLE_RATIO", type=float, default=0.0, show_default=True)
@click.option("--breaker-failures", envvar="LIENTHONG_BREAKER_FAILURES", type=int, default=5, show_default=True)
@click.option(
    "--breaker-open-seconds", envvar="LIENTHONG_BREAKER_OPEN_SECONDS", type=float, default=5.0, show_default=True
)
@click.option("--snapshot-wait", envvar="LIENTHONG_SNAPSHOT_WAIT", type=int, default=30, show_default=True)
@click.option("--ops-listen", envvar="LIENTHONG_OPS_LISTEN", default="", metavar="HOST:PORT",
              help="Serve the operations API and /metrics on this address of their own (the main port then answers "
                   "404 for them); /metrics needs no token there, so keep the address private.")  # fmt: skip
@click.option(
    "--ops-host",
    "ops_hosts",
    multiple=True,
    metavar="NAME[:PORT]",
    help="Another Host name the operations API answers to (e.g. its name behind a proxy); repeatable.",
)
@click.option(
    "--ops-operator-key",
    "ops_operator_keys",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False),
    help="A public JWK file whose key signs operator tokens, besides the gateway's own; repeatable.",
)
@click.option("--tls-dir", envvar="LIENTHONG_TLS_DIR", type=click.Path(file_okay=False),
              help="tls.key, tls.crt and the mesh CA's ca.crt for HTTPS on every port; default <data-dir>/tls "
                   "(`lienthong gateway cert` writes them).")  # fmt: skip
@click.option("--transaction-log-url", envvar="TRANSACTION_LOG_URL", default="",
              help="The central transaction log's store: postgresql://... (deployments) or sqlite:///PATH; default "
                   "SQLite at <data-dir>/txlog.sqlite3 (`lienthong up` gives all its gateways one file).")  # fmt: skip
@click.option("--transaction-log-retention-days", envvar="TRANSACTION_LOG_RETENTION_DAYS",
              type=click.IntRange(min=0), default=DEFAULT_TXLOG_RETENTION_DAYS, show_default=True,
              help="Days of transaction log kept; older days are dropped whole. 0 keeps everything.")  # fmt: skip
@click.option(
    "--insecure-http",
    is_flag=True,
    envvar="LIENTHONG_INSECURE_HTTP",
    help="Serve plain HTTP, without TLS: local development only (a warning is logged at every start).",
)
def serve(
    code: str,
    host: str,
    port: int,
    registry_urls: tuple[str, ...],
    registry_key: str,
    key_file: str | None,
    kid: str | None,
    data_dir: str | None,
    workers: int,
    max_snapshot_age: float,
    policies: str,
    body_limit: int,
    redis_url: str | None,
    trace_sample_ratio: float,
    breaker_failures: int,
    breaker_open_seconds: float,
    snapshot_wait: int,
    ops_listen: str,
    ops_hosts: tuple[str, ...],
    ops_operator_keys: tuple[str, ...],
    tls_dir: str | None,
    transaction_log_url: str,
    transaction_log_retention_days: int,
    insecure_http: bool,
) -> None:
    """Serve /r1 calls with worker processes sharing one port, over HTTPS (TLS 1.3)."""
    from gateway.ops_auth import HostNames, load_operator_keys
    from policies.txlog_store import default_url

    try:
        ids.validate("gateway", code, "code")
        enabled = parse_policies(policies)
        if not parse_registry_urls(*registry_urls):
            raise ValueError("--registry: no registry URL given")
        ops_address = parse_listen(ops_listen) if ops_listen else None
        HostNames.build([], ops_hosts)  # refuse a malformed name now, not in every worker
        load_operator_keys(Path(k) for k in ops_operator_keys)
        if transaction_log_url:
            from policies.txlog_store import open_store

            open_store(transaction_log_url)  # a malformed URL is refused now, not in every worker
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    data = Path(data_dir or f"var/gateways/{code}").resolve()
    key_path = Path(key_file).resolve() if key_file else data / KEY_FILE
    if not key_path.exists():
        raise click.UsageError(f"no gateway key at {key_path}; run `lienthong gateway keygen --code {code}` first")
    private = keys.load_private(key_path)
    embedded = None
    if not redis_url:
        from lienthong.redis_connection import resolve_url

        redis_url, embedded = resolve_url(Path("var/redis"))
    settings = GatewaySettings(
        code=code, registry_url=",".join(parse_registry_urls(*registry_urls)),
        registry_key_file=Path(registry_key).resolve(), key_file=key_path, kid=kid or keys.public_jwk(private)["kid"],
        data_dir=data, host=host, port=port,
        workers=workers, max_snapshot_age=max_snapshot_age, body_limit=body_limit, policies=enabled,
        redis_url=redis_url, trace_sample_ratio=trace_sample_ratio, breaker_failures=breaker_failures,
        breaker_open_seconds=breaker_open_seconds, snapshot_wait=snapshot_wait, ops_listen=ops_listen,
        ops_hosts=ops_hosts, ops_operator_keys=tuple(Path(k).resolve() for k in ops_operator_keys),
        tls_dir=Path(tls_dir).resolve() if tls_dir else None, insecure_http=insecure_http,
        transaction_log_url=transaction_log_url or default_url(data),
        transaction_log_retention_days=transaction_log_retention_days,
    )  # fmt: skip
    if insecure_http:
        log.warning(INSECURE_WARNING)
        click.echo(f"WARNING: {INSECURE_WARNING}", err=True)
    else:
        check_tls_files(settings)
    data.mkdir(parents=True, exist_ok=True)
    # prometheus multiprocess files of a previous run would be summed with ours
    shutil.rmtree(settings.metrics_dir, ignore_errors=True)
    settings.metrics_dir.mkdir(parents=True)
    # where `lienthong ops login` finds this gateway's operations API to print its dashboard link
    ops_host, ops_port = ops_address or (host, port)
    (data / OPS_URL_FILE).write_text(ops_url(ops_host, ops_port, settings.scheme) + "\n")
    os.environ.update(settings.to_env())
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(settings.metrics_dir)
    try:
        serve_workers(settings)
    finally:
        if embedded is not None:
            embedded.stop()


@gateway_group.command("keygen")
@click.option("--code", required=True, help="The gateway's code.")
@click.option("--data-dir", type=click.Path(file_okay=False), help="Default var/gateways/<code>.")
@click.option("--force", is_flag=True, help="Replace an existing key.")
def gateway_keygen(code: str, data_dir: str | None, force: bool) -> None:
    """Make the gateway's Ed25519 key (<data-dir>/gateway.key) and print its public JWK for the registry."""
    try:
        ids.validate("gateway", code, "code")
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    path = Path(data_dir or f"var/gateways/{code}") / KEY_FILE
    if path.exists() and not force:
        key = keys.load_private(path)
    else:
        key = keys.generate()
        keys.save_private(key, path)
    jwk = keys.public_jwk(key)
    (path.parent / "gateway.jwk").write_bytes(orjson.dumps(jwk, option=orjson.OPT_INDENT_2))
    click.echo(orjson.dumps(jwk).decode())


@click.command("keygen")
@click.option("--subsystem", required=True, help="The client subsystem, VN/CLASS/MEMBER/SUBSYSTEM.")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Where to write the private key (PEM).")
@click.option("--algorithm", type=click.Choice(["EdDSA", "ES256"]), default="EdDSA", show_default=True)
@click.option("--register", is_flag=True, help="Also add the public key to the registry.")
@home_option("The mesh's folder: its admin key, CA and registry URL are under <home>/registry.")
@click.option("--registry", "registry_url", envvar="LIENTHONG_REGISTRY_URL", default=None,
              help="Registry URL for --register [default: <home>/registry/url, else https://127.0.0.1:8600].")
@click.option("--registry-ca", type=click.Path(dir_okay=False, path_type=Path), default=None,
              envvar="LIENTHONG_REGISTRY_CA",
              help="The mesh CA an https registry is verified with [default: <home>/registry/ca.crt].")  # fmt: skip
@click.option("--key", "auth_key", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Key (PEM) to sign the registry call with [default: <home>/registry/admin.key].")  # fmt: skip
@click.option("--kid", "auth_kid", default=None, help="Key id registered for --key [default: its thumbprint].")
@click.option("--as", "issuer", default="admin", show_default=True,
              help="Who signs: admin, or a subsystem of the same member (integrator).")  # fmt: skip
def client_keygen(
    subsystem: str, out: str, algorithm: str, register: bool, home: Path, registry_url: str | None,
    registry_ca: Path | None, auth_key: Path | None, auth_kid: str | None, issuer: str,
) -> None:  # fmt: skip
    """Make a client key pair for a subsystem; prints the public JWK (with its kid)."""
    try:
        ids.validate("subsystem", subsystem, "subsystem")
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    key = keys.generate("ES256" if algorithm == "ES256" else "EdDSA")
    keys.save_private(key, out)
    jwk = keys.public_jwk(key)
    Path(out).with_suffix(".jwk").write_bytes(orjson.dumps(jwk, option=orjson.OPT_INDENT_2))
    if register:
        from registry.cli_common import session  # the registry part's admin session: --home, key, CA, URL

        with session(home, registry_url, auth_key, auth_kid, issuer, registry_ca) as s:
            s.run(lambda c: c.add_client_key(subsystem, jwk))
    click.echo(orjson.dumps(jwk).decode())


@click.command("call")
@click.argument("target")
@click.option("--as", "subsystem", required=True, help="The calling subsystem (X-Road-Client).")
@home_option("The mesh's folder, where the default --tls-dir and CA are.")
@click.option("--tls-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="The client certificate to authenticate with (tls.key, tls.crt, ca.crt; `lienthong client cert` "
                   "writes them) [default: <home>/clients/<subsystem with _ for />/tls].")  # fmt: skip
@click.option("--ca", "ca_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The mesh CA the gateway is verified with [default: <tls-dir>/ca.crt, else "
                   "<home>/registry/ca.crt].")  # fmt: skip
@click.option(
    "--key",
    "key_file",
    type=click.Path(exists=True, dir_okay=False),
    help="Authenticate with a JWT signed by this client key (PEM), not the client certificate.",
)
@click.option("--kid", help="The key's kid; default its thumbprint.")
@click.option("--purpose", required=True, help="X-Purpose.")
@click.option("--gateway", "gateway_url", envvar="LIENTHONG_GATEWAY_URL", required=True, help="The home gateway URL.")
@click.option("--audience", help="The home gateway's code; default read from its /healthz.")
@click.option("--method", default="GET", show_default=True)
@click.option("--data", help="Request body (JSON text), or @FILE.")
@click.option("--user-id", help="X-Road-UserId: the official who asked.")
@click.option("--issue", help="X-Road-Issue: the case number.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def call(
    target: str,
    subsystem: str,
    home: Path,
    tls_dir: Path | None,
    ca_file: Path | None,
    key_file: str | None,
    kid: str | None,
    purpose: str,
    gateway_url: str,
    audience: str | None,
    method: str,
    data: str | None,
    user_id: str | None,
    issue: str | None,
    as_json: bool,
) -> None:
    """Call SERVICE_ID/PATH (e.g. VN/GOV/BCA/population/persons/persons/001...) through the home gateway, over
    HTTPS, authenticated by the subsystem's TLS client certificate (no token, X-Road's way) or, with --key, by a
    signed JWT."""
    import httpx

    from lienthong.home import MeshPaths
    from lienthong.mesh_client import TIMEOUT, MeshClient, tls_http

    try:
        ids.validate("subsystem", subsystem, "--as")
        ids.validate("service", "/".join(target.split("/")[:5]), "target")
    except ValueError as exc:
        click.echo(f"usage error: {exc}", err=True)
        sys.exit(2)
    base = gateway_url.rstrip("/")
    https = base.lower().startswith("https:")
    paths = MeshPaths(home)
    cert_dir = None if key_file else tls_dir or paths.client_tls(subsystem)
    if cert_dir is not None:
        _usable_client_certificate(cert_dir, subsystem, https)
    ca = ca_file or next((p for p in (cert_dir and cert_dir / "ca.crt", paths.ca_cert) if p and p.is_file()), None)
    if https and (ca is None or not ca.is_file()):
        click.echo(f"usage error: no mesh CA certificate to verify {base} with ({ca or paths.ca_cert}); pass --ca",
                   err=True)  # fmt: skip
        sys.exit(2)
    key = keys.load_private(key_file) if key_file else None
    payload: Any = None
    if data is not None:
        try:
            payload = orjson.loads(Path(data[1:]).read_bytes() if data.startswith("@") else data.encode())
        except (OSError, orjson.JSONDecodeError) as exc:
            click.echo(f"usage error: --data is not a JSON document: {exc}", err=True)
            sys.exit(2)
    try:
        http = tls_http(ca, cert_dir) if https and ca is not None else httpx.Client(timeout=TIMEOUT)
        if audience is None and key is not None:  # the token's audience; a certificate needs none
            audience = str(http.get(f"{base}/healthz", timeout=5).json()["gateway"])
        client = MeshClient(base, audience or "", subsystem, key, kid, http=http)
        started = time.perf_counter()
        response = client.call(method, target, purpose, body=payload, user_id=user_id, issue=issue)
        elapsed = time.perf_counter() - started
    except (httpx.HTTPError, KeyError, ValueError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    try:
        body: Any = response.json()
    except ValueError:
        body = response.text
    if as_json or not sys.stdout.isatty():
        out = {"status": response.status_code, "x_road_id": response.headers.get("x-road-id"),
               "x_road_error": response.headers.get("x-road-error"), "body": body}  # fmt: skip
        click.echo(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode())
    else:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"{method.upper()} {target}", show_header=False)
        table.add_row("status", str(response.status_code))
        table.add_row("X-Road-Id", response.headers.get("x-road-id", ""))
        if response.headers.get("x-road-error"):
            table.add_row("X-Road-Error (mesh)", response.headers["x-road-error"])
        table.add_row("time", f"{elapsed * 1000:.1f} ms")
        table.add_row(
            "body", orjson.dumps(body, option=orjson.OPT_INDENT_2).decode() if not isinstance(body, str) else body
        )
        Console().print(table)
    sys.exit(0 if response.status_code < 400 else 1)


def _usable_client_certificate(cert_dir: Path, subsystem: str, https: bool) -> None:
    """Exit 2 naming the fix when the call cannot authenticate by certificate: plain HTTP, or no certificate."""
    from lienthong.pki import CertFiles

    if not https:
        click.echo("usage error: a plain http:// gateway sees no client certificate; call its https:// URL, or pass "
                   "--key FILE to authenticate with a JWT", err=True)  # fmt: skip
        sys.exit(2)
    files = CertFiles(cert_dir)
    missing = [str(p) for p in (files.key, files.cert) if not p.is_file()]
    if missing:
        click.echo(f"usage error: no client certificate for {subsystem}: missing {', '.join(missing)}. Run "
                   f"`lienthong client cert --subsystem {subsystem} --key <a client key of it> --out {cert_dir}`, "
                   "pass --tls-dir, or pass --key FILE to authenticate with a JWT", err=True)  # fmt: skip
        sys.exit(2)


def register(group: click.Group) -> None:
    """Add this part's commands to the top-level group."""
    group.add_command(gateway_group)
    group.add_command(client_keygen)
    group.add_command(call)
