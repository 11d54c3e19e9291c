"""Run a real registry process for tests: `start_registry(tmp_path, redis_url, log_dir)` initialises a data dir,
starts `lienthong registry serve` on a free port against the given Redis, and waits until /healthz answers.

Other parts' tests import this; keep its signature stable.
"""

from __future__ import annotations

import ssl
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from lienthong import keys, pki
from lienthong.keys import PublicKey
from lienthong.redis_connection import free_port
from registry import keyfiles
from registry.client import RegistryClient
from tests.procs import Proc, lienthong, requests_session


@dataclass
class RegistryHandle:
    url: str
    data_dir: Path
    proc: Proc
    redis_url: str
    port: int
    options: tuple[str, ...] = ()
    clients: list[RegistryClient] = field(default_factory=list)

    @property
    def registry_public_jwk(self) -> dict[str, Any]:
        return keyfiles.signing_public_jwk(self.data_dir)

    @property
    def registry_public_key(self) -> PublicKey:
        return keys.public_key_from_jwk(self.registry_public_jwk)

    @property
    def admin_key_path(self) -> Path:
        return self.data_dir / keyfiles.ADMIN_KEY

    @property
    def ca_path(self) -> Path:
        """The mesh CA certificate (`lienthong registry init` made it)."""
        return self.data_dir / "ca.crt"

    @property
    def verify_ca(self) -> Path | None:
        """The CA an https registry is verified with (None while the harness speaks plain HTTP)."""
        return self.ca_path if self.url.startswith("https:") else None

    @property
    def admin_kid(self) -> str:
        return keyfiles.admin_kid(self.data_dir)

    def admin_client(self) -> RegistryClient:
        client = RegistryClient(self.url, self.admin_key_path, self.admin_kid, "admin", ca=self.verify_ca)
        self.clients.append(client)
        return client

    def client_for(self, key: keys.PrivateKey, kid: str, iss: str) -> RegistryClient:
        """A client signing as an integrator (iss = its subsystem) or a gateway (iss = gateway:CODE)."""
        client = RegistryClient(self.url, key=key, kid=kid, iss=iss, ca=self.verify_ca)
        self.clients.append(client)
        return client

    def restart(self) -> None:
        self.proc.stop()
        self.proc = _proc(self.data_dir, self.port, self.redis_url, self.proc.log_path.parent, self.options)
        self.proc.start().wait_http(self.url + "/healthz", verify=self.verify)

    @property
    def verify(self) -> ssl.SSLContext | bool:
        """What an httpx client verifies this registry with: the mesh CA (host names unchecked: its certificate names
        it by URI SAN, urn:lienthong:registry:VN)."""
        return pki.client_context(self.ca_path) if self.verify_ca is not None else True

    def http(self, **options: Any) -> httpx.Client:
        """An httpx client for this registry (base_url set, TLS verified with the mesh CA)."""
        return httpx.Client(base_url=self.url, verify=self.verify, **options)

    def requests_session(self) -> Any:
        """A requests.Session (schemathesis' transport) verifying this registry with the mesh CA."""
        return requests_session(self.verify)

    def stop(self) -> None:
        for c in self.clients:
            c.close()
        self.proc.stop()


def _proc(data_dir: Path, port: int, redis_url: str, log_dir: Path, options: tuple[str, ...]) -> Proc:
    args = lienthong("registry", "serve", "--host", "127.0.0.1", "--port", str(port), "--data-dir", str(data_dir),
                     *INSECURE)  # fmt: skip
    return Proc("registry", [*args, "--redis-url", redis_url, *options], log_dir)


# The registry serves HTTPS (issue 14); a test that wants it plain passes options=("--insecure-http",).
INSECURE: tuple[str, ...] = ()


# Test upstreams (echo apps, connectors) listen on loopback ports chosen at run time: allow loopback for any port.
# The registry, its Redis and the gateways stay refused (a mesh endpoint needs an entry with its exact port).
TEST_UPSTREAM_ALLOW = "127.0.0.1,localhost"


def start_registry(
    tmp_path: Path, redis_url: str, log_dir: Path, *, upstream_allow: str | None = TEST_UPSTREAM_ALLOW,
    options: tuple[str, ...] = (),
) -> RegistryHandle:  # fmt: skip
    """Initialise keys in tmp_path/registry and start the registry; the caller stops it (handle.stop()).
    `upstream_allow` is its --upstream-allow (None: none, the production default); `options` more serve flags."""
    data_dir = tmp_path / "registry"
    if not (data_dir / keyfiles.SIGNING_KEY).exists():
        subprocess.run(lienthong("registry", "init", "--data-dir", str(data_dir)), check=True, capture_output=True)
    port = free_port()
    flags = (*(("--upstream-allow", upstream_allow) if upstream_allow is not None else ()), *options)
    proc = _proc(data_dir, port, redis_url, log_dir, flags)
    scheme = "http" if "--insecure-http" in (*INSECURE, *flags) else "https"
    handle = RegistryHandle(url=f"{scheme}://127.0.0.1:{port}", data_dir=data_dir, proc=proc, redis_url=redis_url,
                            port=port, options=flags)  # fmt: skip
    proc.start().wait_http(handle.url + "/healthz", verify=handle.verify)
    return handle
