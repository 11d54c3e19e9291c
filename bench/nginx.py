"""nginx for the baselines: the fixed-JSON upstream every case calls, and nginx as a keep-alive reverse proxy.

Each server runs from a config generated into a temp dir (`-p prefix -c conf -e errlog`), in the foreground, one
worker, no access log, so no system file is read or touched.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from bench import machine
from lienthong.supervisor import Component, Supervisor

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


def upstream_conf(prefix: Path, port: int) -> str:
    top, http = _common(prefix)
    body = RECORD.replace("'", "\\'")
    return (
        f"{top}http {{\n{http}"
        f"  server {{\n    listen 127.0.0.1:{port};\n"
        f"    location / {{ return 200 '{body}'; }}\n  }}\n}}\n"
    )


def proxy_conf(prefix: Path, port: int, upstream_port: int) -> str:
    top, http = _common(prefix)
    return (
        f"{top}http {{\n{http}"
        f"  upstream backend {{\n    server 127.0.0.1:{upstream_port};\n    keepalive 64;\n"
        "    keepalive_requests 10000000;\n  }\n"
        f"  server {{\n    listen 127.0.0.1:{port};\n    location / {{\n      proxy_pass http://backend;\n"
        '      proxy_http_version 1.1;\n      proxy_set_header Connection "";\n    }\n  }\n}\n'
    )


def start(
    supervisor: Supervisor, name: str, prefix: Path, conf_text: str, port: int, pin: list[str] | None = None
) -> Component:
    """Write the config, check it, start nginx pinned to the server core (or `pin`) and wait until it answers."""
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
    return supervisor.start(
        Component(name, [*prefix_argv, *base], health_url=f"http://127.0.0.1:{port}/healthz"), timeout=15
    )
