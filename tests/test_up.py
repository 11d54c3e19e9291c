"""`lienthong up`: a taken port is replaced and named, Ctrl-C stops every process of the mesh (issue 5), and the mesh
runs TLS on every link with certificates it issued itself through the registry, printing how to call it with a
client certificate in lines that fit 80 columns (issue 14). A killed connector is shown down and restarted while the
rest keeps serving; Ctrl-C stops in dependency order without tracebacks; printed links are whole and answer (issue 16).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import sqlite3
import stat
import subprocess
import threading
import time
from pathlib import Path

import httpx
import orjson

from lienthong import pki
from lienthong.cli.mesh_layout import (
    BIRTH,
    CONNECTORS,
    GATEWAYS,
    INSURANCE,
    MEMBERS,
    MOJ,
    NGHEAN_CIVIL,
    POPULATION,
    VERIFY,
)
from lienthong.home import MeshPaths
from lienthong.mesh_client import MeshClient, tls_http
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
    # admin commands find the mesh by its home alone (LIENTHONG_HOME): key, CA and the registry's port are there
    listed = subprocess.run(lienthong("gateways", "list", "--json"), capture_output=True, text=True, timeout=60,
                            env={**env, "LIENTHONG_HOME": str(home)})  # fmt: skip
    assert listed.returncode == 0, listed.stdout + listed.stderr
    assert {g["code"] for g in orjson.loads(listed.stdout)} == {"national", "hanoi", "nghean"}


def _client(home: Path, out: str, subsystem: str, gateway: str) -> MeshClient:
    """A client system calling its home gateway (as printed by `up`) with its TLS client certificate."""
    index = [g.code for g in GATEWAYS].index(gateway)
    url = re.findall(r"https://127\.0\.0\.1:\d+(?=/ops/v1/ui/)", out)[index]
    paths = MeshPaths(home)
    return MeshClient(url, gateway, subsystem, http=tls_http(paths.ca_cert, paths.client_tls(subsystem)))


def _check_links(home: Path, out: str) -> None:
    """Every printed URL is whole on a line of its own at 80 columns, and none answers 401 (no connector link is
    printed: a connector answers only its gateway's certificate)."""
    assert "Swagger UI, for its gateway" not in out and "/ui/\n" not in out.replace("/v1/ui/\n", "")
    lines = out.splitlines()
    dashboard = [line.strip() for line in lines if line.strip().endswith("/ops/v1/dashboard")]
    assert dashboard and re.fullmatch(r"https://127\.0\.0\.1:\d+/ops/v1/dashboard", dashboard[0]), dashboard
    verify = pki.client_context(MeshPaths(home).ca_cert)
    for url in {line.strip() for line in lines if re.fullmatch(r"\s*https://\S+", line)}:
        status = httpx.get(url, verify=verify, timeout=10).status_code
        assert status != 401 and status < 500, (url, status)


def _check_connector_outage(home: Path, out: str, seen: list[str]) -> None:
    """kill -9 one connector: the rest keeps serving while it is down, `up` shows it down, and it comes back."""
    population = _client(home, out, MOJ, "national")
    insurance = _client(home, out, NGHEAN_CIVIL, "nghean")
    with sqlite3.connect(MeshPaths(home).data / "insurance.sqlite") as db:
        insured = db.execute("SELECT si_number FROM insured ORDER BY si_number LIMIT 1").fetchone()[0]
    with sqlite3.connect(MeshPaths(home).data / "population.sqlite") as db:
        person = db.execute("SELECT id FROM persons WHERE restricted = 0 ORDER BY id LIMIT 1").fetchone()[0]
    assert insurance.call("GET", f"{INSURANCE}/insured/{insured}", BIRTH).status_code == 200
    pid = subprocess.run(["pgrep", "-o", "-f", f"connector serve insurance .*{home}"], capture_output=True,
                         text=True).stdout.split()  # fmt: skip
    assert pid, "no insurance connector process"
    os.kill(int(pid[0]), signal.SIGKILL)
    deadline = time.monotonic() + 120  # only to catch a hang
    while not any("insurance is DOWN" in line for line in seen):
        assert time.monotonic() < deadline, "".join(seen[-50:])
        time.sleep(0.05)
    # while it is down (status line printed), the other services answer
    assert population.call("GET", f"{POPULATION}/persons/{person}", VERIFY).status_code == 200
    while not any("insurance is UP again" in line for line in seen):
        assert time.monotonic() < deadline, "".join(seen[-50:])
        time.sleep(0.05)
    assert insurance.call("GET", f"{INSURANCE}/insured/{insured}", BIRTH).status_code == 200
    assert population.call("GET", f"{POPULATION}/persons/{person}", VERIFY).status_code == 200
    assert any("down: insurance" in line for line in seen), "".join(seen[-50:])
    for client in (population, insurance):
        client.close()


def test_up_takes_another_port_keeps_serving_through_a_crash_and_ctrl_c_stops_in_order(tmp_path: Path) -> None:
    home = tmp_path / "mesh"
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    taken = busy.getsockname()[1]
    args = lienthong(
        "up", "--home", str(home), "--people", "300", "--registry-port", str(taken),
        "--gateway-port", str(free_port()), "--connector-port", str(free_port()),
    )  # fmt: skip
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "LANG": "C.UTF-8", "COLUMNS": "80"}
    # its own session, so that the Ctrl-C below reaches every process of the group as a terminal's would
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True,
                            start_new_session=True)  # fmt: skip
    seen: list[str] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            seen.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 120
        while not any("Press Ctrl-C" in line for line in seen):
            assert proc.poll() is None and time.monotonic() < deadline, "".join(seen)[-4000:]
            time.sleep(0.05)
        out = "".join(seen)
        assert f"port {taken} is taken; the registry uses port" in out
        assert "/ops/v1/dashboard" in out and "/metrics" in out and "/v1/ui/" in out
        assert len(re.findall(r"snapshot version \d+ installed", out)) <= 3, "start-up noise is back"
        _check_tls_mesh(home, out)
        _check_links(home, out)
        running = subprocess.run(["pgrep", "-f", str(home)], capture_output=True, text=True).stdout.split()
        assert len(running) >= 9  # redis, registry, 3 gateways, 4 connectors (gateway workers may add more)
        _check_connector_outage(home, out, seen)
        stopped_at = len(seen)
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C
        assert proc.wait(60) == 0
        reader.join(10)
        stop = "".join(seen[stopped_at:])
        assert "Traceback" not in stop and "CancelledError" not in stop, stop[-4000:]
        assert "lost Redis" not in stop, stop[-4000:]
        # dependency order: the edge (gateways, connectors) stops before the registry, Redis last
        order = [name for line in seen[stopped_at:] if (name := line.split("|", 1)[0].strip())]
        assert "redis" not in order or order.index("redis") > max(
            (i for i, n in enumerate(order) if n != "redis"), default=-1
        ), order
    finally:
        if proc.poll() is None:  # a failed assertion: let `up` stop its children before it goes
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        busy.close()
    leftover = subprocess.run(["pgrep", "-f", str(home)], capture_output=True, text=True).stdout.strip()
    assert leftover == "", f"processes left running after Ctrl-C: {leftover}"
