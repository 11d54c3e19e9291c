"""`lienthong up`: the whole mesh on one machine, each component its own OS process, set up through the registry API.

Order: embedded Redis, data, registry keys and the mesh CA, registry (HTTPS), gateways' keys, members, subsystems and
client keys, then every certificate through the registry API as `lienthong gateway cert`, `connector cert` and
`client cert` do (a CSR signed with the key the registry holds for the identity), gateways (HTTPS, mutual TLS between
them) and connectors (HTTPS, they register their own services at their https URL) all started at once, approval and
grants by the registry admin, then a wait until every gateway holds the snapshot that carries it all. Nothing is
written around the API.
`MeshConfig.insecure_http` runs it all in plain HTTP, for development only.
"""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import redis
from cryptography import x509

from gateway.settings import KEY_FILE
from lienthong import keys, pki
from lienthong.cli.mesh_layout import CONNECTORS, GATEWAYS, GRANTS, MEMBERS
from lienthong.cli.supervisor import Component, StartFailed, Supervisor
from lienthong.home import MeshPaths
from lienthong.mesh_client import MeshClient, tls_http
from lienthong.redis_connection import free_port, redis_executable
from lienthong.subjects import subject_key_env
from policies.txlog_store import default_url
from registry.cli_common import URL_FILE

Say = Callable[[str], None]
TIER_REDIS, TIER_REGISTRY, TIER_EDGE = 0, 1, 2  # stopped highest first: what serves calls, then what it needs


@dataclass
class MeshConfig:
    root: Path = field(default_factory=lambda: Path(os.environ.get("LIENTHONG_HOME", "var")))
    host: str = "127.0.0.1"
    registry_port: int = 8600  # the first registry's; more registries (issue 17) take the next ports
    registries: int = 1  # registry processes on the same Redis and data dir, any of which serves
    gateway_ports: dict[str, int] = field(default_factory=lambda: {g.code: g.port for g in GATEWAYS})
    connector_ports: dict[str, int] = field(default_factory=lambda: {c.name: c.port for c in CONNECTORS})
    redis_port: int = 8679
    redis_url: str | None = field(default_factory=lambda: os.environ.get("REDIS_URL"))
    people: int = 100_000
    seed: int = 1
    gateway_workers: int = 1
    echo_logs: bool = True
    upstream_allow: tuple[str, ...] = ()  # more upstreams the registry allows besides the connectors (HOST:PORT)
    insecure_http: bool = False  # plain HTTP on every link, no certificates: local development only

    @property
    def scheme(self) -> str:
        return "http" if self.insecure_http else "https"

    @property
    def paths(self) -> MeshPaths:
        return MeshPaths(self.root)


@dataclass
class Mesh:
    """A running mesh: its URLs, its admin client, and the supervisor that owns its processes."""

    config: MeshConfig
    supervisor: Supervisor
    redis_url: str
    registry_url: str
    gateway_urls: dict[str, str]
    connector_urls: dict[str, str]
    kids: dict[str, str]  # subsystem -> kid of its client key
    ca: Path | None = None  # the mesh CA every https URL above is verified with (None: plain HTTP)
    registry_urls: list[str] = field(default_factory=list)  # every registry; registry_url is the first

    @property
    def registries(self) -> str:
        """Every registry's URL, comma-separated, as gateways and connectors take them."""
        return ",".join(self.registry_urls or [self.registry_url])

    def admin(self) -> Any:
        from registry.client import RegistryClient

        return RegistryClient(self.registry_url, self.config.paths.registry / "admin.key", iss="admin", ca=self.ca)

    @property
    def verify(self) -> ssl.SSLContext | bool:
        """What an httpx client checks the mesh's certificates with (no client certificate)."""
        return pki.client_context(self.ca) if self.ca is not None else True

    def client(self, subsystem: str, gateway: str, *, certificate: bool = False) -> MeshClient:
        """A client system of `subsystem` at its home `gateway`: by its TLS client certificate (X-Road's way, no
        token), or by a JWT signed with its client key."""
        url = self.gateway_urls[gateway]
        if certificate:
            if self.ca is None:
                raise ValueError("a plain HTTP mesh has no client certificates")
            return MeshClient(url, gateway, subsystem, http=tls_http(self.ca, self.config.paths.client_tls(subsystem)))
        key = keys.load_private(self.config.paths.client_key(subsystem))
        http = tls_http(self.ca) if self.ca is not None else None
        return MeshClient(url, gateway, subsystem, key, self.kids.get(subsystem), http=http)

    def stop(self) -> None:
        """Gateways and connectors first, then the registry, Redis last (the supervisor's tiers)."""
        self.supervisor.stop_all()


def port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def pick_port(host: str, wanted: int, what: str, say: Say) -> int:
    """The wanted port, or a free one with a note saying which, so a busy port never stops the demo."""
    if port_free(host, wanted):
        return wanted
    chosen = free_port(host)
    say(f"port {wanted} is taken; {what} uses port {chosen} instead")
    return chosen


def _lienthong(*args: str) -> list[str]:
    exe = Path(sys.executable).parent / "lienthong"
    return [str(exe), *args] if exe.exists() else [sys.executable, "-m", "lienthong", *args]


def _ensure_key(path: Path) -> keys.PrivateKey:
    if path.exists():
        return keys.load_private(path)
    key = keys.generate()
    keys.save_private(key, path)
    return key


def _exists_ok(create: Callable[..., Any], *args: Any) -> None:
    """Run a create call; an object that already exists from an earlier run is fine (409)."""
    from registry.client import RegistryError

    try:
        create(*args)
    except RegistryError as exc:
        if exc.status != 409:
            raise


def ensure_data(config: MeshConfig, say: Say) -> None:
    data = config.paths.data
    marker = data / ".generated"
    wanted = f"people={config.people} seed={config.seed}"
    if marker.exists() and marker.read_text() == wanted:
        say(f"data: reusing {data} ({wanted})")
        return
    say(f"data: generating {config.people:,} people into {data}")
    cmd = _lienthong("data", "generate", "--people", str(config.people), "--seed", str(config.seed), "--out", str(data))
    if not sys.stdout.isatty():
        cmd.append("--quiet")
    subprocess.run(cmd, check=True)
    marker.write_text(wanted)


def database_url(config: MeshConfig, connector: str) -> str:
    from connectors.sdk.config import default_database_url

    return default_database_url(connector, config.paths.data.resolve())


def start(config: MeshConfig, say: Say = print) -> Mesh:
    """Start and configure the whole mesh; on any failure stop what was started and raise StartFailed."""
    paths = config.paths
    paths.root.mkdir(parents=True, exist_ok=True)
    supervisor = Supervisor(paths.logs, echo=config.echo_logs)
    try:
        if config.redis_url:
            redis_url = config.redis_url
            say(f"redis: using REDIS_URL {redis_url}")
        else:
            port = pick_port(config.host, config.redis_port, "embedded redis", say)
            redis_url = start_redis(supervisor, paths.redis, config.host, port)
            say(f"redis: embedded server on {redis_url}, data in {paths.redis}")
        ensure_data(config, say)
        mesh = _start_processes(config, supervisor, redis_url, say)
        _configure(mesh, say)
        return mesh
    except BaseException:
        supervisor.stop_all()
        raise


def start_redis(supervisor: Supervisor, directory: Path, host: str, port: int) -> str:
    """The embedded Redis as the supervisor's lowest tier: in its own session, so a terminal's Ctrl-C does not stop
    it before what uses it, stopped last, restarted if it dies. Its append-only file keeps the data across runs."""
    directory.mkdir(parents=True, exist_ok=True)
    url = f"redis://{host}:{port}/0"
    argv = [
        redis_executable(), "--port", str(port), "--bind", host, "--dir", str(directory.resolve()), "--save", "",
        "--appendonly", "yes", "--appendfsync", "everysec", "--protected-mode", "yes", "--loglevel", "warning",
    ]  # fmt: skip

    def ready() -> bool:
        try:
            with redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=0.5) as client:
                return bool(client.ping())
        except redis.RedisError:
            return False

    supervisor.start(Component("redis", argv, tier=TIER_REDIS, ready=ready), timeout=20)
    (directory / "redis.port").write_text(str(port))  # where other commands on this home find it
    return url


def _start_processes(config: MeshConfig, supervisor: Supervisor, redis_url: str, say: Say) -> Mesh:
    from registry import keyfiles

    paths, host, scheme = config.paths, config.host, config.scheme
    _init_registry(paths.registry, say)
    ca = None if config.insecure_http else paths.ca_cert
    env = {"REDIS_URL": redis_url}
    # the connectors' ports are chosen first: they are the only loopback upstreams the registry allows
    connector_ports = {c.name: pick_port(host, config.connector_ports[c.name], f"connector {c.name}", say)
                       for c in CONNECTORS}  # fmt: skip
    allow = ",".join([*(f"{host}:{port}" for port in connector_ports.values()), *config.upstream_allow])
    registry_urls: list[str] = []
    for i in range(config.registries):  # one after the other: the first makes the TLS files the others reuse
        rport = pick_port(host, config.registry_port + i, "the registry", say)
        registry_urls.append(f"{scheme}://{host}:{rport}")
        serve = ["registry", "serve", "--host", host, "--port", str(rport), "--data-dir", str(paths.registry)]
        argv = _lienthong(*serve, "--upstream-allow", allow, *_insecure(config))
        name = "registry" if i == 0 else f"registry-{i + 1}"
        supervisor.start(Component(name, argv, f"{registry_urls[-1]}/healthz", env, ca, tier=TIER_REGISTRY))
    registry_url = registry_urls[0]
    # admin commands run with --home (or LIENTHONG_HOME) find this registry, whatever port it took
    (config.paths.registry / URL_FILE).write_text(registry_url + "\n")
    mesh = Mesh(config, supervisor, redis_url, registry_url, {}, {}, {}, ca, registry_urls)
    with mesh.admin() as admin:
        for gw in GATEWAYS:
            port = pick_port(host, config.gateway_ports[gw.code], f"gateway {gw.code}", say)
            url = f"{scheme}://{host}:{port}"
            mesh.gateway_urls[gw.code] = url
            jwk = keys.public_jwk(_ensure_key(paths.gateway(gw.code) / KEY_FILE))
            _register_gateway(admin, gw.code, url, jwk)
        for member in MEMBERS:
            _exists_ok(admin.add_member, member.id, member.name, member.home_gateway)
            for code, name in member.subsystems:
                subsystem = f"{member.id}/{code}"
                _exists_ok(admin.add_subsystem, subsystem, name)
                jwk = keys.public_jwk(_ensure_key(paths.client_key(subsystem)))
                mesh.kids[subsystem] = jwk["kid"]
                _exists_ok(admin.add_client_key, subsystem, jwk)
    if ca is not None:
        issue_certificates(mesh, say)
    registry_pub = paths.registry / keyfiles.SIGNING_PUB
    gateway_env = {**env, **subject_key_env(paths.root / "subject.key")}  # one subject key for every gateway
    # one transaction log for the whole local mesh (<home>/txlog.sqlite3) unless TRANSACTION_LOG_URL names a store
    gateway_env["TRANSACTION_LOG_URL"] = os.environ.get("TRANSACTION_LOG_URL") or default_url(paths.root)
    edge: list[Component] = []  # gateways and connectors need the registry only, not each other: started together
    for gw in GATEWAYS:
        url = mesh.gateway_urls[gw.code]
        data_dir = paths.gateway(gw.code)
        argv = _lienthong(
            "gateway", "serve", "--code", gw.code, "--host", host, "--port", url.rsplit(":", 1)[1],
            "--registry", mesh.registries, "--registry-key", str(registry_pub), "--data-dir", str(data_dir),
            "--workers", str(config.gateway_workers), "--redis-url", redis_url, "--trace-sample-ratio", "0.01",
            *_insecure(config, "--tls-dir", str(paths.gateway_tls(gw.code))),
        )  # fmt: skip
        edge.append(Component(f"gw-{gw.code}", argv, f"{url}/healthz", gateway_env, ca, tier=TIER_EDGE))
    for spec in CONNECTORS:
        port = connector_ports[spec.name]
        url = f"{scheme}://{host}:{port}"  # registered as the service's upstream URL by the connector itself
        mesh.connector_urls[spec.name] = url
        tls = ("--tls-dir", str(paths.connector_tls(spec.name)), "--registry-ca", str(paths.ca_cert))
        argv = _lienthong(
            "connector", "serve", spec.name, *_insecure(config, *tls), "--host", host, "--port", str(port),
            "--database-url", database_url(config, spec.name), "--registry", mesh.registries,
            "--gateway", spec.gateway, "--key", str(paths.client_key(spec.subsystem)),
            "--kid", mesh.kids[spec.subsystem],
        )  # fmt: skip
        # a connector takes only its hosting gateway's client certificate, so its health is probed with that one
        client_tls = None if ca is None else paths.gateway_tls(spec.gateway)
        own_env = gateway_env if spec.reads_subject_log else env  # the subject key goes to the tracker alone
        edge.append(Component(spec.name, argv, f"{url}/healthz", own_env, ca, client_tls, tier=TIER_EDGE))
    supervisor.start_all(edge)
    return mesh


def _insecure(config: MeshConfig, *tls_options: str) -> tuple[str, ...]:
    """A component's TLS options, or --insecure-http when the mesh runs in plain HTTP."""
    return ("--insecure-http",) if config.insecure_http else tls_options


def _init_registry(directory: Path, say: Say) -> None:
    """The registry's keys and the mesh CA, made once; a home made before the mesh had a CA gets one."""
    from registry import keyfiles, mesh_ca

    if not (directory / keyfiles.SIGNING_KEY).exists():
        made = keyfiles.init(directory)
        say(f"registry: keys and mesh CA made, admin key {made.admin_key}, CA {mesh_ca.ca_paths(directory)[0]}")
    elif not mesh_ca.has_ca(directory):
        mesh_ca.ensure_own_certificate(mesh_ca.tls_files(directory), mesh_ca.Issuer(mesh_ca.init_ca(directory)))
        say(f"registry: mesh CA made, {mesh_ca.ca_paths(directory)[0]}")


def certify(mesh: Mesh, directory: Path, identity_uri: str, key_path: Path, iss: str) -> x509.Certificate:
    """The identity's certificate in `directory` (a pki.CertFiles dir), from the registry's POST /v1/certificates
    signed with `key_path` (the key the registry holds for the identity), unless the one there is still good."""
    from lienthong.cert_renewal import current_certificate, renew_certificate
    from registry.client import RegistryClient

    assert mesh.ca is not None
    files = pki.CertFiles(directory)
    held = current_certificate(files, identity_uri)
    if held is not None and files.ca.read_bytes() == mesh.ca.read_bytes():  # a home's CA may have been remade
        return held
    with RegistryClient(mesh.registry_url, key_path, None, iss, ca=mesh.ca) as client:
        return renew_certificate(files, identity_uri, client.request_certificate)


def issue_certificates(mesh: Mesh, say: Say) -> None:
    """Every gateway's (`lienthong gateway cert`), every connector's (`connector cert`: its provider subsystem's)
    and every client system's (`client cert`) certificate, before any of them starts."""
    paths = mesh.config.paths
    for gw in GATEWAYS:
        certify(mesh, paths.gateway_tls(gw.code), pki.identity("gateway", gw.code),
                paths.gateway(gw.code) / KEY_FILE, f"gateway:{gw.code}")  # fmt: skip
    for spec in CONNECTORS:
        certify(mesh, paths.connector_tls(spec.name), pki.identity("subsystem", spec.subsystem),
                paths.client_key(spec.subsystem), spec.subsystem)  # fmt: skip
    for subsystem in mesh.kids:
        certify(mesh, paths.client_tls(subsystem), pki.identity("subsystem", subsystem), paths.client_key(subsystem),
                subsystem)  # fmt: skip
    say(f"certificates: {len(GATEWAYS)} gateways, {len(CONNECTORS)} connectors and {len(mesh.kids)} client systems, "
        f"from the mesh CA {paths.ca_cert}")  # fmt: skip


def _register_gateway(admin: Any, code: str, url: str, jwk: dict[str, Any]) -> None:
    from registry.client import RegistryError

    try:
        admin.add_gateway(code, url, [jwk])
        return
    except RegistryError as exc:
        if exc.status != 409:
            raise
    current = admin.get_gateway(code)
    if current.get("base_url") != url:
        admin.update_gateway(code, url)
    if jwk["kid"] not in {k.get("kid") for k in current.get("keys", []) if not k.get("revoked")}:
        admin.add_gateway_key(code, jwk)


def _configure(mesh: Mesh, say: Say) -> None:
    """Approve the services the connectors registered, add the grants, wait for every gateway to see them."""
    from registry.client import RegistryError

    with mesh.admin() as admin:
        deadline = time.monotonic() + 30
        pending = {c.service for c in CONNECTORS}
        while pending and time.monotonic() < deadline:
            for service_id in sorted(pending):
                try:
                    service = admin.get_service(service_id)
                except RegistryError as exc:
                    if exc.status == 404:
                        continue
                    raise
                if not service.get("approved"):
                    admin.approve_service(service_id)
                    say(f"registry: approved {service_id}")
                pending.discard(service_id)
            if pending:
                time.sleep(0.2)
        if pending:
            raise StartFailed(f"these connectors never registered their service: {', '.join(sorted(pending))}")
        for grant in GRANTS:
            active = [g for g in admin.list_grants(consumer=grant.consumer, service=grant.service) if not g["revoked"]]
            if active:
                continue
            endpoints: Any = "*"
            if not isinstance(grant.endpoints, str):
                endpoints = [{"method": m, "path": p} for m, p in grant.endpoints]
            admin.add_grant(
                grant.consumer,
                grant.service,
                list(grant.purposes),
                endpoints=endpoints,
                fields=list(grant.fields) if grant.fields is not None else None,
                quota={"per_minute": grant.per_minute, "per_day": grant.per_day},
                default_purpose=grant.default_purpose,  # X-Road clients send no X-Purpose
            )
        version = int(admin.snapshot(gateway=GATEWAYS[0].code).headers["etag"].strip('"'))
    wait_for_snapshot(mesh, version)
    say(f"mesh: every gateway holds snapshot version {version} or later")


def wait_for_snapshot(mesh: Mesh, version: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    verify = mesh.verify
    for code, url in mesh.gateway_urls.items():
        while True:
            try:
                held = httpx.get(f"{url}/healthz", timeout=2, verify=verify).json().get("snapshot_version") or 0
            except (httpx.HTTPError, ValueError):
                held = 0
            if held >= version:
                break
            if time.monotonic() > deadline:
                raise StartFailed(f"gateway {code} did not receive snapshot version {version} within {timeout:.0f}s")
            time.sleep(0.1)
