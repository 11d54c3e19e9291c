"""A small mesh of real processes for tests and benchmarks: a registry, gateways (national + provinces), upstreams.

The catalogue is declared on a `Mesh` (add_gateway, add_member, add_service, add_grant, ...) and `publish()` makes it
live. With `registry="real"` (the default) a real `lienthong registry serve` process runs on the given Redis and
publish() pushes what changed through the registry's own RegistryClient (the registry assigns grant ids: see
`grant_id()`). With `registry="standin"` a stand-in process serves snapshots this module signs itself, speaking
the same protocol (§7: signed compact JWS, ETag, If-None-Match, ?wait= long poll); it needs no Redis.
Upstreams are a small real ASGI echo app under uvicorn (`echo_app`), standing in for connectors where a test needs
no connector logic.

TLS on every link (issue 14) unless `tls=False`: the registry serves HTTPS with the mesh CA `lienthong registry init`
made ("standin": a CA this module makes, published in the snapshot's `pki.ca`); each gateway gets its certificate
through the registry API (a CSR signed with its own key, as `lienthong gateway cert` sends it; "standin": issued here)
and serves HTTPS with --tls-dir; an echo upstream registered for a service is served over HTTPS with a certificate for
the service's provider subsystem (the identity the gateway checks), one TLS echo process per (echo, provider). Test
clients verify with the mesh CA: `mesh.client()`, `gw.client()`, `gw.verify`.

Run as a module for the child processes:
    python -m tests.mesh_support registry --port P --dir D
    python -m tests.mesh_support echo --port P [--tls-dir D]
"""

from __future__ import annotations

import asyncio
import copy
import os
import re
import ssl
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import jwt
import orjson

from lienthong import keys, pki, tokens
from lienthong.mesh_client import PROBLEM_ACCEPT
from lienthong.redis_connection import free_port
from tests.procs import Proc, lienthong
from tests.registry_support import TEST_UPSTREAM_ALLOW

PY = sys.executable
REPO = Path(__file__).resolve().parent.parent


def _trust_store() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False  # mesh certificates name their holder by URI SAN, as pki.client_context checks
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


# What a test's own httpx client verifies gateways with (`httpx.Client(verify=MESH_TLS)`): every mesh CA this process
# has made, added as each Mesh learns its CA (a context's trust store may grow; new handshakes use it). A test that
# checks refusals builds its own context instead.
MESH_TLS = _trust_store()
# What lienthong's own clients send: refusals as RFC 9457 problem details at lienthong's precise status
# (docs/protocol.md §6); an X-Road client (tests/xroad_client.py) sends its own Accept and gets X-Road's shape.
LIENTHONG_ACCEPT = PROBLEM_ACCEPT

# -- the stand-in registry (a child process) --------------------------------------------------------------------


def _standin_registry(directory: Path) -> Any:
    """ASGI app serving <directory>/<gateway>.jws (a full envelope, protocol §7.1) to the gateway named in the bearer
    token (not verified: stand-in). It never answers a delta: a full snapshot every time is what the protocol allows."""

    def current(code: str) -> tuple[int, bytes] | None:
        path = directory / f"{code}.jws"
        try:
            data = path.read_bytes()
        except OSError:
            return None
        return int(orjson.loads(data)["version"]), data

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if (directory / "down").exists():  # a test switches the registry "off" without killing the process
            await _send(send, 503, b"down", "text/plain")
            return
        if scope["path"] == "/healthz":
            await _send(send, 200, b"{}", "application/json")
            return
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        try:
            claims = jwt.decode(headers.get("authorization", "")[7:], options={"verify_signature": False})
            code = str(claims["iss"]).removeprefix("gateway:")
        except (jwt.PyJWTError, KeyError):
            await _send(send, 401, b"no token", "text/plain")
            return
        query = dict(p.split("=", 1) for p in scope["query_string"].decode().split("&") if "=" in p)
        wait = min(int(query.get("wait", "0")), 60)
        held = headers.get("if-none-match", "").strip('"')
        deadline = time.monotonic() + wait
        while True:
            found = current(code)
            if found is None:
                await _send(send, 404, b"no snapshot", "text/plain")
                return
            version, data = found
            if str(version) != held:
                await _send(send, 200, data, "application/json", [("etag", f'"{version}"')])
                return
            if time.monotonic() >= deadline:
                await _send(send, 304, b"", "application/json", [("etag", f'"{version}"')])
                return
            await asyncio.sleep(0.05)

    return app


async def _send(send: Any, status: int, body: bytes, ctype: str, extra: list[tuple[str, str]] | None = None) -> None:
    headers = [(b"content-type", ctype.encode()), (b"content-length", str(len(body)).encode())]
    headers += [(k.encode(), v.encode()) for k, v in (extra or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


# -- the echo upstream (a child process) ----------------------------------------------------------------------


async def echo_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Echoes what reached it. /slow/{ms} sleeps first; /status/{code} answers that status; /big answers 64 KiB;
    a path with a `cookies` segment answers two Set-Cookie and two Link fields."""
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    path: str = scope["path"]
    parts = path.strip("/").split("/")
    status = 200
    for i, part in enumerate(parts[:-1]):
        if part == "slow":
            await asyncio.sleep(int(parts[i + 1]) / 1000)
        if part == "status":
            status = int(parts[i + 1])
    headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
    assertion = headers.get("x-lienthong-assertion")
    claims = jwt.decode(assertion, options={"verify_signature": False}) if assertion else None
    doc = {
        "id": parts[-1],
        "full_name": "Nguyen Van A",
        "household": {"id": "H1", "address": "secret"},
        "echo": {
            "method": scope["method"],
            "path": path,
            "raw_path": (scope.get("raw_path") or b"").decode(),
            "query": scope["query_string"].decode(),
            "headers": headers,
            "body": body.decode(errors="replace"),
            "assertion": claims,
            "port": scope["server"][1] if scope.get("server") else None,
        },
    }
    out = orjson.dumps(doc)
    extra = [("x-road-error", "forged-by-upstream")]
    if "cookies" in parts:  # repeated response fields, which must all reach the client
        extra += [("set-cookie", "a=1; Path=/"), ("set-cookie", "b=2; Path=/"), ("link", "</p/2>; rel=next"),
                  ("link", "</p/9>; rel=last"), ("x-provider-note", "kept")]  # fmt: skip
    await _send(send, status, out, "application/json", extra)


# -- keys and snapshots -----------------------------------------------------------------------------------------


@dataclass
class KeyPair:
    key: keys.PrivateKey
    kid: str
    path: Path

    @property
    def jwk(self) -> dict[str, str]:
        return keys.public_jwk(self.key, self.kid)


def make_key(path: Path, algorithm: keys.Algorithm = "EdDSA", kid: str | None = None) -> KeyPair:
    key = keys.generate(algorithm)
    keys.save_private(key, path)
    return KeyPair(key, kid or keys.public_jwk(key)["kid"], path)


def sign_jws(payload: dict[str, Any], registry: KeyPair) -> str:
    return jwt.api_jws.encode(
        orjson.dumps(payload), registry.key, algorithm=keys.algorithm_of(registry.key), headers={"kid": registry.kid}
    )


def sign_snapshot(doc: dict[str, Any], registry: KeyPair) -> bytes:
    """A full snapshot envelope (protocol §7.1) of `doc`: its `gateway` and `upstreams` go in the gateway's part."""
    common = {k: v for k, v in doc.items() if k not in ("gateway", "upstreams")}
    own = {"version": doc["version"], "gateway": doc.get("gateway"), "upstreams": doc.get("upstreams", {})}
    return orjson.dumps({
        "kind": "full", "version": doc["version"],
        "common": sign_jws({**common, "part": "common", "kind": "full"}, registry),
        "gateway": sign_jws({**own, "part": "gateway", "kind": "full"}, registry),
    })  # fmt: skip


def client_token(client: KeyPair, subsystem: str, audience: str, lifetime: int = 60, **extra: Any) -> str:
    return tokens.sign(client.key, client.kid, {"iss": subsystem, "sub": subsystem, "aud": audience, **extra},
                       lifetime=lifetime)  # fmt: skip


# -- the mesh ---------------------------------------------------------------------------------------------------


@dataclass
class GatewayProc:
    code: str
    port: int
    key: KeyPair
    data_dir: Path
    proc: Proc | None = None
    tls: bool = True

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def tls_dir(self) -> Path:
        return self.data_dir / "tls"

    @property
    def ca_path(self) -> Path:
        """The mesh CA, as this gateway holds it (ca.crt beside its certificate)."""
        return pki.CertFiles(self.tls_dir).ca

    @property
    def verify(self) -> ssl.SSLContext | bool:
        """What a client verifies this gateway with: the mesh CA (its certificate names it by URI SAN, not by host)."""
        return pki.client_context(self.ca_path) if self.tls else True

    def client(self, cert: pki.CertFiles | None = None, **options: Any) -> httpx.Client:
        """An httpx client for this gateway (base_url set), verifying it with the mesh CA; `cert` is a client
        certificate to present (Mesh.client_cert)."""
        verify = pki.client_context(self.ca_path, cert) if self.tls else True
        options.setdefault("headers", {"accept": LIENTHONG_ACCEPT})
        return httpx.Client(base_url=self.url, verify=verify, **options)

    @property
    def hop_verify(self) -> ssl.SSLContext | bool:
        """TLS as this gateway calls a peer or a connector: the mesh CA, and this gateway's own certificate."""
        return pki.client_context(self.ca_path, pki.CertFiles(self.tls_dir)) if self.tls else True

    def hop_client(self, **options: Any) -> httpx.Client:
        """An httpx client speaking as this gateway on the mesh hop: it presents this gateway's own certificate (the
        hosting gateway requires it beside an assertion from this gateway) and verifies with the mesh CA."""
        return httpx.Client(verify=self.hop_verify, **options)


@dataclass
class Mesh:
    """Holds the catalogue (as a snapshot document) and the processes; `publish()` pushes a new version."""

    root: Path
    log_dir: Path
    policies: str = "authn,authz"
    redis_url: str = "redis://127.0.0.1:1/0"
    max_snapshot_age: float = 600
    workers: int = 1
    registry: str = "real"  # or "standin"
    tls: bool = True  # TLS on every link; False: the whole mesh in plain HTTP (--insecure-http everywhere)
    registry_key: KeyPair = field(init=False)
    registry_port: int = field(init=False)
    registry_proc: Proc | None = None
    gateways: dict[str, GatewayProc] = field(default_factory=dict)
    upstream_procs: list[Proc] = field(default_factory=list)
    version: int = 0
    doc: dict[str, Any] = field(default_factory=dict)
    hosted: dict[str, dict[str, str]] = field(default_factory=dict)  # gateway -> service id -> upstream URL
    clients: dict[str, KeyPair] = field(default_factory=dict)
    openapi_docs: dict[str, dict[str, Any]] = field(default_factory=dict)
    registry_handle: Any = None  # tests.registry_support.RegistryHandle in "real" mode
    _pushed: set[tuple[str, str]] = field(default_factory=set)
    _grant_ids: dict[str, str] = field(default_factory=dict)
    _echoes: set[str] = field(default_factory=set)  # the plain URLs of echo upstreams start_upstream started
    _tls_echoes: dict[tuple[str, str], str] = field(default_factory=dict)  # (echo URL, provider) -> its https URL

    def __post_init__(self) -> None:
        if self.registry not in ("real", "standin"):
            raise ValueError("registry is 'real' or 'standin'")
        self.root.mkdir(parents=True, exist_ok=True)
        self.registry_key = make_key(self.root / "registry.key")
        (self.root / "registry.jwk").write_bytes(orjson.dumps(self.registry_key.jwk))
        self.registry_port = free_port()
        self.snap_dir = self.root / "snapshots"
        self.snap_dir.mkdir(exist_ok=True)
        # the stand-in publishes the test registry's upstream policy: loopback echo apps on any port are allowed
        policy = {"allow": TEST_UPSTREAM_ALLOW.split(","), "mesh": []}
        self.doc = {"instance": "VN", "members": [], "subsystems": [], "gateways": [], "services": [],
                    "clients": [], "grants": [], "upstream_policy": policy}  # fmt: skip
        if self.tls and self.registry == "standin":  # the real registry makes its CA at init
            ca = pki.CertificateAuthority.create(self.root / "ca" / "ca.crt", self.root / "ca" / "ca.key")
            self.doc["pki"] = {"ca": [pki.cert_pem(ca.cert).decode()], "revoked": []}
            MESH_TLS.load_verify_locations(self.ca_path)

    # TLS ---------------------------------------------------------------------------------------------------------

    @property
    def ca_path(self) -> Path:
        """The mesh CA certificate (the real registry's, once started; the stand-in's own)."""
        if self.registry == "real":
            if self.registry_handle is None:
                raise RuntimeError("the real registry makes the mesh CA: start_registry() first")
            return Path(self.registry_handle.ca_path)
        return self.root / "ca" / "ca.crt"

    @property
    def verify(self) -> ssl.SSLContext | bool:
        return pki.client_context(self.ca_path) if self.tls else True

    def client(self, cert: pki.CertFiles | None = None, **options: Any) -> httpx.Client:
        """An httpx client verifying every gateway of this mesh with its CA; `cert` a client certificate to present."""
        options.setdefault("headers", {"accept": LIENTHONG_ACCEPT})
        return httpx.Client(verify=pki.client_context(self.ca_path, cert) if self.tls else True, **options)

    def issuer(self) -> Any:
        """tests.upstream_tls_support.IssuingCA over the mesh CA's files, writing under <root>/certs."""
        from tests.upstream_tls_support import IssuingCA

        key = self.ca_path.with_name("ca.key")
        return IssuingCA(self.root / "certs", pki.CertificateAuthority.load(self.ca_path, key))

    def client_cert(self, subsystem: str) -> pki.CertFiles:
        """A client certificate for `subsystem` (X-Road's way to authenticate at the home gateway), from the mesh CA."""
        name = "client-" + subsystem.replace("/", "_")
        files = pki.CertFiles(self.root / "certs" / name)
        if files.exists():
            return files
        issued: pki.CertFiles = self.issuer().issue(name, pki.identity("subsystem", subsystem), trust=self.ca_path)
        return issued

    def connector_tls(self, name: str, service_id: str) -> list[str]:
        """`lienthong connector serve` flags for a connector of `service_id` over TLS: its --tls-dir holds a
        certificate for the service's provider subsystem (what the gateway checks), from the mesh CA. The connector
        accepts only its hosting gateway's certificate: call it with that gateway's `hop_verify`."""
        if not self.tls:
            return ["--insecure-http"]
        provider = service_id.rsplit("/", 1)[0]
        files = self.issuer().issue(f"connector-{name}", pki.identity("subsystem", provider), trust=self.ca_path)
        return ["--tls-dir", str(files.directory)]

    def gateway_cert(self, code: str) -> None:
        """Gateway `code`'s certificate, now (start_gateways gets it otherwise), e.g. to call a connector as it."""
        self._gateway_cert(self.gateways[code])

    def _gateway_cert(self, gw: GatewayProc) -> None:
        """The gateway's certificate into its --tls-dir: through the registry API with a CSR signed by the gateway's
        key (the real path), or issued here from the stand-in's CA."""
        files = pki.CertFiles(gw.tls_dir)
        if files.exists():
            return
        identity = pki.identity("gateway", gw.code)
        if self.registry == "standin":
            self.issuer().issue(gw.code, identity, trust=self.ca_path)
            files.directory.mkdir(parents=True, exist_ok=True)
            for name in ("tls.key", "tls.crt", "ca.crt"):
                os.replace(self.root / "certs" / gw.code / name, files.directory / name)
            return
        from lienthong.cert_renewal import renew_certificate
        from registry.client import RegistryClient

        if ("gateway", gw.code) not in self._pushed:
            self._sync()  # the registry issues only to a gateway it knows
        with RegistryClient(self.registry_url, key=gw.key.key, kid=gw.key.kid, iss=f"gateway:{gw.code}",
                            ca=self.ca_path) as client:  # fmt: skip
            renew_certificate(files, identity, client.request_certificate)

    def live_upstream(self, service_id: str, url: str) -> str:
        """The URL a service's upstream is registered with: an echo this mesh started is served over HTTPS with a
        certificate for the service's provider (the identity the gateway checks), one TLS echo per provider."""
        if not self.tls or url not in self._echoes:
            return url
        provider = service_id.rsplit("/", 1)[0]
        found = self._tls_echoes.get((url, provider))
        if found is None:
            port = free_port()
            name = f"echo-{port}"
            files = self.issuer().issue(name, pki.identity("subsystem", provider), trust=self.ca_path)
            self.upstream_procs.append(self._echo_proc(port, name, files.directory))
            found = self._tls_echoes[(url, provider)] = f"https://127.0.0.1:{port}"
        return found

    @property
    def registry_url(self) -> str:
        if self.registry_handle is not None:
            return str(self.registry_handle.url)
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.registry_port}"

    def grant_id(self, name: str) -> str:
        """The id the registry gave the grant declared as `name` (the same in stand-in mode)."""
        return self._grant_ids.get(name, name)

    # catalogue -------------------------------------------------------------------------------------------------

    def add_gateway(self, code: str) -> GatewayProc:
        data = self.root / "gateways" / code
        gw = GatewayProc(code, free_port(), make_key(data / "gateway.key"), data, tls=self.tls)
        self.gateways[code] = gw
        self.hosted.setdefault(code, {})
        self.doc["gateways"].append({"code": code, "base_url": gw.url, "keys": [gw.key.jwk], "version": 1})
        return gw

    def add_parties(self, homes: dict[str, str], subsystems: Iterable[str], clients: Iterable[str] = ()) -> None:
        """Members with their home gateways, their subsystems, and the subsystems that get a client key."""
        for member, home in homes.items():
            self.add_member(member, home)
        for sub in subsystems:
            self.add_subsystem(sub)
        for sub in clients:
            self.add_client(sub)

    def add_member(self, member: str, home_gateway: str) -> None:
        self.doc["members"].append({"id": member, "name": member, "home_gateway": home_gateway, "version": 1})

    def add_subsystem(self, subsystem: str) -> None:
        member = subsystem.rsplit("/", 1)[0]
        self.doc["subsystems"].append({"id": subsystem, "member": member, "name": subsystem, "version": 1})

    def add_client(self, subsystem: str, algorithm: keys.Algorithm = "EdDSA") -> KeyPair:
        pair = make_key(self.root / "clients" / (subsystem.replace("/", "_") + ".key"), algorithm)
        self.clients[subsystem] = pair
        entry = next((c for c in self.doc["clients"] if c["subsystem"] == subsystem), None)
        if entry is None:
            entry = {"subsystem": subsystem, "keys": []}
            self.doc["clients"].append(entry)
        entry["keys"].append({**pair.jwk, "revoked": False})
        return pair

    def add_service(
        self, service_id: str, gateway: str, upstream: str, endpoints: Iterable[tuple[str, str]] = (),
        timeout_ms: int = 5000, approved: bool = True, subject_param: str | None = None,
        openapi: dict[str, Any] | None = None,
    ) -> None:  # fmt: skip
        """Declare a service; give `endpoints` (method, path) or a real `openapi` document to derive them from."""
        provider, code = service_id.rsplit("/", 1)
        if openapi is not None:
            from registry.openapi_endpoints import derive  # the registry's own derivation, so both modes agree

            derived = derive(openapi)
        else:
            derived = [{"method": m, "path": p, "operation_id": f"{m.lower()}{i}", "summary": p, "enabled": True,
                        "subject_param": subject_param} for i, (m, p) in enumerate(endpoints)]  # fmt: skip
        self.doc["services"].append({
            "id": service_id, "provider": provider, "code": code, "version_label": "v1", "gateway": gateway,
            "approved": approved, "timeout_ms": timeout_ms, "name": code, "description": f"{code} service",
            "endpoints": derived, "version": 1,
        })  # fmt: skip
        if openapi is not None:
            self.openapi_docs[service_id] = openapi
        self.hosted[gateway][service_id] = upstream

    def add_grant(
        self, grant_id: str, consumer: str, service: str, purposes: list[str],
        endpoints: Any = "*", fields: list[str] | None = None, quota: dict[str, int] | None = None,
    ) -> None:  # fmt: skip
        self.doc["grants"].append({
            "id": grant_id, "consumer": consumer, "service": service, "endpoints": endpoints, "purposes": purposes,
            "fields": fields, "quota": quota or {"per_minute": 100000, "per_day": 10000000}, "revoked": False,
            "version": 1,
        })  # fmt: skip

    def revoke_grant(self, grant_id: str) -> None:
        for g in self.doc["grants"]:
            if g["id"] == grant_id:
                g["revoked"] = True

    def publish(self) -> int:
        """Make the declared catalogue live; returns the snapshot version the gateways should reach."""
        if self.registry == "real":
            return self._sync() if self.registry_handle is not None else self.version
        self.version += 1
        for code in self.gateways:
            doc = copy.deepcopy(self.doc)
            upstreams = {sid: self.live_upstream(sid, url) for sid, url in self.hosted.get(code, {}).items()}
            doc.update(version=self.version, gateway=code, upstreams=upstreams,
                       generated_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))  # fmt: skip
            target = self.snap_dir / f"{code}.jws"
            tmp = target.with_suffix(".tmp")
            tmp.write_bytes(sign_snapshot(doc, self.registry_key))
            os.replace(tmp, target)
        return self.version

    # processes -------------------------------------------------------------------------------------------------

    def start_registry(self) -> None:
        if self.registry == "real":
            from tests.registry_support import start_registry

            plain = () if self.tls else ("--insecure-http",)
            self.registry_handle = start_registry(self.root, self.redis_url, self.log_dir, options=plain)
            if self.tls:
                MESH_TLS.load_verify_locations(self.ca_path)
            (self.root / "registry.jwk").write_bytes(orjson.dumps(self.registry_handle.registry_public_jwk))
            self._sync()
            return
        argv = [PY, "-m", "tests.mesh_support", "registry", "--port", str(self.registry_port), "--dir",
                str(self.snap_dir)]  # fmt: skip
        if self.tls:
            files = self.issuer().issue("standin-registry", pki.identity("registry", "VN"), trust=self.ca_path)
            argv += ["--tls-dir", str(files.directory)]
        self.registry_proc = Proc("registry", argv, self.log_dir, env={"PYTHONPATH": str(REPO)}).start()
        self.registry_proc.wait_http(f"{self.registry_url}/healthz", verify=self.verify)

    def registry_down(self, down: bool) -> None:
        if self.registry_handle is not None:
            process = self.registry_handle.proc.process
            running = process is not None and process.poll() is None
            if down and running:  # an outage, not a graceful stop (which would wait for the gateways' long polls)
                self.registry_handle.proc.kill9()
            elif not down and not running:
                self.registry_handle.restart()
            return
        flag = self.snap_dir / "down"
        if down:
            flag.touch()
        else:
            flag.unlink(missing_ok=True)

    def start_upstream(self, name: str) -> str:
        """An echo upstream; its plain URL, which a service registered with it is served over HTTPS instead of
        (one TLS echo per provider, see live_upstream) when the mesh runs TLS."""
        port = free_port()
        self.upstream_procs.append(self.start_upstream_on(port, name))
        url = f"http://127.0.0.1:{port}"
        self._echoes.add(url)
        return url

    def start_upstream_on(self, port: int, name: str | None = None) -> Proc:
        """A plain-HTTP echo upstream on a given port; the caller stops it (or start_upstream keeps it for stop())."""
        return self._echo_proc(port, name or f"echo-{port}", None)

    def _echo_proc(self, port: int, name: str, tls_dir: Path | None) -> Proc:
        argv = [PY, "-m", "tests.mesh_support", "echo", "--port", str(port)]
        argv += ["--tls-dir", str(tls_dir)] if tls_dir is not None else []
        proc = Proc(name, argv, self.log_dir, env={"PYTHONPATH": str(REPO)}).start()
        scheme, verify = ("https", self.verify) if tls_dir is not None else ("http", True)
        proc.wait_http(f"{scheme}://127.0.0.1:{port}/healthz/x", verify=verify)
        return proc

    def gateway_argv(self, gw: GatewayProc, overrides: dict[str, str] | None = None) -> list[str]:
        opts = {
            "--code": gw.code, "--host": "127.0.0.1", "--port": str(gw.port), "--registry": self.registry_url,
            "--registry-key": str(self.root / "registry.jwk"), "--key": str(gw.key.path), "--kid": gw.key.kid,
            "--data-dir": str(gw.data_dir), "--workers": str(self.workers),
            "--max-snapshot-age": str(self.max_snapshot_age), "--policies": self.policies,
            "--redis-url": self.redis_url, "--snapshot-wait": "20", "--breaker-failures": "3",
            "--breaker-open-seconds": "1",
        }  # fmt: skip
        opts.update(overrides or {})
        argv = lienthong("gateway", "serve")
        for k, v in opts.items():
            argv += [k, v]
        if not self.tls:
            return [*argv, "--insecure-http"]
        return argv if "--tls-dir" in opts else [*argv, "--tls-dir", str(gw.tls_dir)]

    def start_gateway(self, code: str, options: dict[str, str] | None = None, wait_ready: bool = True) -> GatewayProc:
        """Start `lienthong gateway serve` for `code`; options override CLI flags, e.g. {"--workers": "2"}."""
        return self.start_gateways({code: options or {}}, wait_ready)[0]

    def start_gateways(self, options: dict[str, dict[str, str]], wait_ready: bool = True) -> list[GatewayProc]:
        """Start several gateways at once (their start-up overlaps), then wait for each."""
        started = []
        for code, opts in options.items():
            gw = self.gateways[code]
            if self.tls:
                self._gateway_cert(gw)
            gw.proc = Proc(f"gateway-{code}", self.gateway_argv(gw, opts), self.log_dir).start()
            started.append(gw)
        for gw in started:
            assert gw.proc is not None
            gw.proc.wait_http(f"{gw.url}/{'readyz' if wait_ready else 'healthz'}", verify=gw.verify)
        return started

    def stop_gateway(self, code: str) -> None:
        proc = self.gateways[code].proc
        if proc is not None:
            proc.stop()

    def stop(self) -> None:
        for gw in self.gateways.values():
            if gw.proc is not None:
                gw.proc.stop()
        for proc in self.upstream_procs:
            proc.stop()
        # killed, not stopped: a graceful stop would wait out the long polls the gateways left open
        if self.registry_proc is not None:
            self.registry_proc.kill9()
        if self.registry_handle is not None:
            self.registry_handle.proc.kill9()
            self.registry_handle.stop()

    # the real registry ------------------------------------------------------------------------------------------

    def _sync(self) -> int:
        """Push what the registry has not seen yet, in dependency order; return its snapshot version."""
        admin = self._admin()
        doc = self.doc
        for gw in doc["gateways"]:
            if self._first(("gateway", gw["code"])):
                admin.add_gateway(gw["code"], gw["base_url"], gw["keys"])
        for m in doc["members"]:
            if self._first(("member", m["id"])):
                admin.add_member(m["id"], m["name"], m["home_gateway"])
        for sub in doc["subsystems"]:
            if self._first(("subsystem", sub["id"])):
                admin.add_subsystem(sub["id"], sub["name"])
        for client in doc["clients"]:
            for jwk in client["keys"]:
                if self._first(("client-key", jwk["kid"])):
                    admin.add_client_key(client["subsystem"], jwk)
        for svc in doc["services"]:
            if self._first(("service", svc["id"])):
                admin.register_service(
                    svc["id"], openapi=self.openapi_docs.get(svc["id"]) or _openapi(svc), gateway=svc["gateway"],
                    upstream_url=self._upstream(svc), name=svc["name"], description=svc["description"],
                    timeout_ms=svc["timeout_ms"],
                )  # fmt: skip
                if svc["approved"]:
                    admin.approve_service(svc["id"])
        for g in doc["grants"]:
            if self._first(("grant", g["id"])):
                made = admin.add_grant(g["consumer"], g["service"], g["purposes"], endpoints=g["endpoints"],
                                       fields=g["fields"], quota=g["quota"])  # fmt: skip
                self._grant_ids[g["id"]] = made["id"]
            if g["revoked"] and self._first(("revoked", g["id"])):
                admin.revoke_grant(self._grant_ids[g["id"]])
        code = next(iter(self.gateways))
        etag = admin.snapshot(gateway=code).headers["etag"]
        self.version = int(etag.strip('W/"'))
        return self.version

    def _first(self, item: tuple[str, str]) -> bool:
        if item in self._pushed:
            return False
        self._pushed.add(item)
        return True

    def _admin(self) -> Any:
        if not hasattr(self, "_admin_client"):
            self._admin_client = self.registry_handle.admin_client()
        return self._admin_client

    def _upstream(self, svc: dict[str, Any]) -> str:
        return self.live_upstream(svc["id"], self.hosted[svc["gateway"]][svc["id"]])

    def wait_version(self, version: int, timeout: float = 5.0, codes: Iterable[str] | None = None) -> float:
        """Seconds until every gateway's /healthz reports `version`."""
        started = time.monotonic()
        pending = set(codes or self.gateways)
        with self.client(timeout=1) as http:
            while pending:
                for code in list(pending):
                    try:
                        if http.get(f"{self.gateways[code].url}/healthz").json()["snapshot_version"] >= version:
                            pending.discard(code)
                    except httpx.HTTPError:
                        pass
                if pending and time.monotonic() - started > timeout:
                    raise TimeoutError(f"gateways {sorted(pending)} did not reach snapshot version {version}")
                time.sleep(0.05)
        return time.monotonic() - started


def _openapi(svc: dict[str, Any]) -> dict[str, Any]:
    """An OpenAPI document whose endpoints the registry derives back to the declared ones."""
    paths: dict[str, dict[str, Any]] = {}
    for ep in svc["endpoints"]:
        params = []
        for name in re.findall(r"\{([A-Za-z_][A-Za-z0-9_]*)\}", ep["path"]):
            param: dict[str, Any] = {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            if name == ep.get("subject_param"):
                param["x-lienthong-subject"] = True
            params.append(param)
        op = {"operationId": ep["operation_id"], "summary": ep["summary"], "parameters": params,
              "responses": {"200": {"description": "found"}}}  # fmt: skip
        paths.setdefault(ep["path"], {})[ep["method"].lower()] = op
    return {"openapi": "3.1.0", "info": {"title": svc["name"], "version": svc["version_label"]}, "paths": paths}


def call_headers(
    mesh: Mesh, subsystem: str, home: str, purpose: str = "birth-registration", **extra: str
) -> dict[str, str]:
    token = client_token(mesh.clients[subsystem], subsystem, home)
    return {"Authorization": f"Bearer {token}", "X-Road-Client": subsystem, "X-Purpose": purpose,
            "Accept": LIENTHONG_ACCEPT, **extra}  # fmt: skip


def _main(argv: list[str]) -> None:
    import argparse

    import uvicorn

    parser = argparse.ArgumentParser()
    parser.add_argument("what", choices=["registry", "echo"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dir", type=Path)
    parser.add_argument("--tls-dir", type=Path, help="serve HTTPS with tls.key and tls.crt from this pki.CertFiles dir")
    args = parser.parse_args(argv)
    app = _standin_registry(args.dir) if args.what == "registry" else echo_app
    tls: dict[str, Any] = {}
    if args.tls_dir is not None:
        files = pki.CertFiles(args.tls_dir)
        tls = {"ssl_keyfile": str(files.key), "ssl_certfile": str(files.cert), "ssl_ca_certs": str(files.ca)}
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", lifespan="off", **tls)


if __name__ == "__main__":
    _main(sys.argv[1:])
