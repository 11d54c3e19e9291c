"""nginx for the baselines: the fixed-JSON upstream every case calls, and nginx as a keep-alive reverse proxy.

Each server runs from a config generated into a temp dir (`-p prefix -c conf -e errlog`), in the foreground, one
worker, no access log, so no system file is read or touched.

The TLS cases (issue 14) add TLS to both sides of the comparison. The upstream gets a second, HTTPS port in the same
process, asking for a client certificate as a connector does (optional, so that wrk, which cannot send one, can call
it directly). The TLS proxy is the baseline of the gateway's TLS cases and does what a gateway does on both legs:
TLS 1.3 towards its clients (a client certificate verified when sent), and towards the upstream TLS 1.3 with its own
client certificate, the chain verified to the bench CA and the upstream's identity checked, over kept-alive
connections whose sessions are resumed. nginx cannot match a URI SAN, so it checks the host name the bench put in the
upstream's certificate beside its identity (bench/tls.py).
"""

from __future__ import annotations

import os
import shutil
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path

from bench import machine
from bench.tls import wait_https
from lienthong import pki
from lienthong.cli.supervisor import Component, Supervisor

# A small record, shaped like what the mesh carries; the connector case uses real generated data instead.
RECORD = '{"id":"001203004567","full_name":"NGUYEN VAN A","birth_date":"2003-04-05","status":"ok"}'


def executable() -> str | None:
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None
    )


def _common(prefix: Path) -> tuple[str, str]:
    """The main-context lines and the http-context lines every generated config shares."""
    user = "user root;\n" if os.geteuid() == 0 else ""  # workers must be able to use the temp dir
    tmp = prefix / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    return (
        f"{user}worker_processes 1;\ndaemon off;\npid {prefix}/nginx.pid;\nerror_log {prefix}/error.log warn;\n"
        "events { worker_connections 4096; }\n"
    ), (
        "  access_log off;\n  default_type application/json;\n  keepalive_requests 10000000;\n"
        f"  client_body_temp_path {tmp}/body;\n  proxy_temp_path {tmp}/proxy;\n"
        f"  fastcgi_temp_path {tmp}/fcgi;\n  uwsgi_temp_path {tmp}/uwsgi;\n  scgi_temp_path {tmp}/scgi;\n"
    )


def _tls_listen(port: int, files: pki.CertFiles) -> str:
    """A server's HTTPS lines: TLS 1.3 only, a client certificate verified against the CA when one is sent."""
    return (
        f"    listen 127.0.0.1:{port} ssl;\n    ssl_protocols TLSv1.3;\n"
        f"    ssl_certificate {files.cert};\n    ssl_certificate_key {files.key};\n"
        f"    ssl_client_certificate {files.ca};\n    ssl_verify_client optional;\n"
    )


def upstream_conf(prefix: Path, port: int, tls: tuple[int, pki.CertFiles] | None = None) -> str:
    """The fixed-record upstream on `port`; with `tls` (port, certificate) the same over HTTPS on that port too."""
    top, http = _common(prefix)
    body = RECORD.replace("'", "\\'")
    location = f"    location / {{ return 200 '{body}'; }}\n"
    servers = f"  server {{\n    listen 127.0.0.1:{port};\n{location}  }}\n"
    if tls is not None:
        servers += f"  server {{\n{_tls_listen(*tls)}{location}  }}\n"
    return f"{top}http {{\n{http}{servers}}}\n"


@dataclass(frozen=True)
class ProxyTLS:
    """The TLS proxy's certificate (presented on both legs) and the host name the upstream's must carry."""

    files: pki.CertFiles
    upstream_name: str


def proxy_conf(prefix: Path, port: int, upstream_port: int, tls: ProxyTLS | None = None) -> str:
    """nginx as a keep-alive reverse proxy to the upstream; with `tls`, TLS on both legs (module docstring)."""
    top, http = _common(prefix)
    listen = f"    listen 127.0.0.1:{port};\n" if tls is None else _tls_listen(port, tls.files)
    scheme = "http" if tls is None else "https"
    upstream_tls = "" if tls is None else (
        f"      proxy_ssl_protocols TLSv1.3;\n      proxy_ssl_certificate {tls.files.cert};\n"
        f"      proxy_ssl_certificate_key {tls.files.key};\n      proxy_ssl_trusted_certificate {tls.files.ca};\n"
        f'      proxy_ssl_verify on;\n      proxy_ssl_name {tls.upstream_name};\n'
        "      proxy_ssl_session_reuse on;\n"
    )  # fmt: skip
    return (
        f"{top}http {{\n{http}"
        f"  upstream backend {{\n    server 127.0.0.1:{upstream_port};\n    keepalive 64;\n"
        "    keepalive_requests 10000000;\n  }\n"
        f"  server {{\n{listen}    location / {{\n      proxy_pass {scheme}://backend;\n"
        f'      proxy_http_version 1.1;\n      proxy_set_header Connection "";\n{upstream_tls}    }}\n  }}\n}}\n'
    )


def start(
    supervisor: Supervisor, name: str, prefix: Path, conf_text: str, port: int, pin: list[str] | None = None,
    tls: ssl.SSLContext | None = None,
) -> Component:  # fmt: skip
    """Write the config, check it, start nginx pinned to the server core (or `pin`) and wait until it answers on
    `port` (over TLS with the client context `tls`)."""
    exe = executable()
    if exe is None:
        raise FileNotFoundError("nginx is not installed")
    prefix.mkdir(parents=True, exist_ok=True)
    conf = prefix / "nginx.conf"
    conf.write_text(conf_text)
    base = [exe, "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")]
    check = subprocess.run([*base, "-t"], capture_output=True, text=True, check=False)
    if check.returncode != 0:
        raise RuntimeError(f"nginx rejected {conf}: {check.stderr.strip()[-500:]}")
    prefix_argv = machine.server_prefix() if pin is None else pin
    if tls is None:
        return supervisor.start(
            Component(name, [*prefix_argv, *base], health_url=f"http://127.0.0.1:{port}/healthz"), timeout=15
        )
    component = supervisor.start(Component(name, [*prefix_argv, *base]))
    process = component.process
    assert process is not None

    def gone() -> str | None:
        code = process.poll()
        return None if code is None else f"{name} exited with status {code}: {list(component.tail)[-5:]}"

    wait_https(f"https://127.0.0.1:{port}/healthz", tls, gone, timeout=15)
    return component
