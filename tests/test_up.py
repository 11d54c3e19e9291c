"""`lienthong up`: a taken port is replaced and named, Ctrl-C stops every process of the mesh (issue 5), and the mesh
runs TLS on every link with certificates it issued itself through the registry, printing how to call it with a
client certificate in lines that fit 80 columns (issue 14)."""

from __future__ import annotations

import os
import re
import signal
import socket
import stat
import subprocess
import time
from pathlib import Path

import httpx
import orjson

from lienthong import pki
from lienthong.mesh_layout import CONNECTORS, GATEWAYS, MEMBERS, MeshPaths
from lienthong.redis_connection import free_port
from tests.procs import VENV_BIN, lienthong


def _how_to_call(out: str) -> list[str]:
    """The printed block from its 'How to call' heading to the Ctrl-C line."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("How to call as"))
    end = next(i for i, line in enumerate(lines) if line.startswith("Press Ctrl-C"))
    return lines[start + 1 : end]


def _check_tls_mesh(home: Path, out: str) -> None:
    paths = MeshPaths(home)
    # every URL printed is https; none is plain http
    urls = re.findall(r"\b(https?)://127\.0\.0\.1:\d+", out)
    assert urls and set(urls) == {"https"}, urls
    registry = re.search(r"(https://127\.0\.0\.1:\d+)/v1/ui/", out)
    assert registry is not None
    ca = paths.ca_cert
    assert stat.S_IMODE((paths.registry / "ca.key").stat().st_mode) == 0o600
    verify = pki.client_context(ca)
    assert httpx.get(f"{registry[1]}/healthz", verify=verify, timeout=10).status_code == 200
    # each component holds its own certificate, for its own identity, from the mesh CA
    held = {code: paths.gateway_tls(code) for code in (g.code for g in GATEWAYS)}
    expected = {code: pki.identity("gateway", code) for code in held}
    for spec in CONNECTORS:
        held[spec.name], expected[spec.name] = paths.connector_tls(spec.name), pki.identity("subsystem", spec.subsystem)
    for member in MEMBERS:
        for code, _ in member.subsystems:
            sub = f"{member.id}/{code}"
            held[sub], expected[sub] = paths.client_tls(sub), pki.identity("subsystem", sub)
    for name, directory in held.items():
        files = pki.CertFiles(directory)
        assert pki.cert_identity(pki.load_cert(files.cert)) == expected[name], name
        assert files.ca.read_bytes() == ca.read_bytes(), name
        assert stat.S_IMODE(files.key.stat().st_mode) == 0o600, name

    block = _how_to_call(out)
    gateway = next(line.split("=", 1)[1] for line in block if line.startswith("  G="))
    assert gateway.startswith("https://")
    # the port speaks TLS only: a plaintext request is told to use https
    plain = httpx.get(gateway.replace("https://", "http://", 1) + "/healthz", timeout=10)
    assert plain.status_code == 400 and plain.json()["code"] == "tls-required", plain.text
    # no printed line is cut: all fit 80 columns but the home folder, which is the user's own path
    assert all(len(line) <= 80 for line in block if not line.startswith("  M=")), block
    assert any(line.lstrip().startswith("curl ") for line in block)
    # the printed lines work as printed: `lienthong call` with the client certificate (no token), then curl
    env = {"PATH": f"{VENV_BIN}:/usr/bin:/bin", "HOME": str(home.parent), "LANG": "C.UTF-8"}
    ran = subprocess.run(["bash", "-e", "-c", "\n".join(block)], capture_output=True, text=True, env=env, timeout=60)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    call_json, _, curl_json = ran.stdout.partition("\n}\n")
    assert orjson.loads(call_json + "}")["status"] == 200, ran.stdout
    person = block[-1].rsplit("/", 1)[1]
    assert orjson.loads(curl_json)["id"] == person, ran.stdout
    # the JWT way still works over TLS: --key, verified with the mesh CA
    subsystem = next(w for line in block for w in line.split() if w.startswith("VN/PROV/"))
    target = block[-1].split("/r1/", 1)[1]
    jwt = subprocess.run(
        lienthong("call", "--home", str(home), "--gateway", gateway, "--as", subsystem, "--purpose",
                  "identity-verification", "--key", str(paths.client_key(subsystem)), "--json", target),
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert jwt.returncode == 0 and orjson.loads(jwt.stdout)["status"] == 200, jwt.stdout + jwt.stderr


def test_up_takes_another_port_and_ctrl_c_stops_everything(tmp_path: Path) -> None:
    home = tmp_path / "mesh"
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    taken = busy.getsockname()[1]
    args = lienthong(
        "up", "--home", str(home), "--people", "300", "--quiet-logs", "--registry-port", str(taken),
        "--gateway-port", str(free_port()), "--connector-port", str(free_port()),
    )  # fmt: skip
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "LANG": "C.UTF-8", "COLUMNS": "200"}
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "Press Ctrl-C" in line:
                break
        out = "".join(lines)
        assert "Press Ctrl-C" in out, out[-4000:]
        assert f"port {taken} is taken; the registry uses port" in out
        assert "/ops/v1/dashboard" in out and "/metrics" in out and "/v1/ui/" in out
        _check_tls_mesh(home, out)
        running = subprocess.run(["pgrep", "-f", str(home)], capture_output=True, text=True).stdout.split()
        assert len(running) >= 8  # redis, registry, 3 gateways, 4 connectors (gateway workers may add more)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:  # a failed assertion: let `up` stop its children before it goes
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
        busy.close()
    leftover = subprocess.run(["pgrep", "-f", str(home)], capture_output=True, text=True).stdout.strip()
    assert leftover == "", f"processes left running after Ctrl-C: {leftover}"
