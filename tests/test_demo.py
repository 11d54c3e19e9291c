"""`lienthong demo --once` runs the whole mesh as separate processes and the national procedure across it (issue 5).

It starts its own embedded Redis, registry, three gateways and four connectors on free ports, and must exit 0 only
when every step gave the expected answer and the metered count equals the calls sent. It runs TLS on every link
(issue 14): no component is started with --insecure-http, a plaintext request to a gateway is refused, and the calls
authenticate by client certificate (no token) or by JWT over TLS.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from lienthong import pki
from lienthong.cli.mesh_layout import MOJ, NGHEAN_CIVIL
from lienthong.home import MeshPaths
from lienthong.redis_connection import free_port
from tests.procs import lienthong


def test_demo_once_runs_the_procedure_end_to_end(tmp_path: Path) -> None:
    home = tmp_path / "mesh"
    args = lienthong(
        "demo", "--once", "--home", str(home), "--people", "2000", "--burst", "40",
        "--registry-port", str(free_port()), "--gateway-port", str(free_port()),
        "--connector-port", str(free_port()),
    )  # fmt: skip
    # a fresh mesh must not reuse another test's Redis
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "LANG": "C.UTF-8"}
    done = subprocess.run(args, capture_output=True, text=True, timeout=240, env=env)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-5000:]
    assert "insurance issues the TE health insurance card: HTTP 201" in out
    assert "HTTP 403 not-permitted" in out
    assert "demo: every step gave the expected answer" in out
    # the two procedures' calls, the burst, and the tracker's answer (asked again until the log has all three readers)
    counted = re.search(r"calls sent (\d+), metered (\d+): equal", out)
    assert counted is not None and counted[1] == counted[2], out[-3000:]
    assert 6 + 40 + 1 <= int(counted[1]) <= 6 + 40 + 40, counted[0]
    flat = " ".join(out.split())  # rich wraps long lines at the terminal's width
    assert "the data tracker answers for the child 040*********: HTTP 200" in flat, out[-5000:]
    tracker = flat[flat.index("who read the child's data, newest first") :]
    for reader in ("civil-status/births", "population/persons", "insurance/insurance"):  # the procedure's three
        assert f"{NGHEAN_CIVIL} read VN/" in tracker and reader in tracker, tracker[:3000]
    # over TLS: plain HTTP refused, client certificates and JWTs both used, the way to call printed
    assert "✔ plain HTTP to http://127.0.0.1:" in out and "tls-required" in out, out[-5000:]
    assert f"{NGHEAN_CIVIL} calls gateway nghean with its TLS client certificate (no token)" in flat
    assert f"{MOJ} at gateway national: its TLS client certificate (no token)" in flat
    assert "a signed JWT over TLS" in flat
    assert "How to call as" in out and "--pinnedpubkey sha256//" in out
    log_text = "\n".join(p.read_text(errors="replace") for p in (home / "logs").glob("*.log"))
    assert "insecure-http" not in log_text and "PLAIN HTTP" not in log_text
    gateway_cert = pki.load_cert(pki.CertFiles(MeshPaths(home).gateway_tls("national")).cert)
    assert pki.cert_identity(gateway_cert) == "urn:lienthong:gateway:national"
    # each component wrote its own log, and none is left running
    logs = {p.stem for p in (home / "logs").glob("*.log")}
    assert {"registry", "gw-national", "gw-hanoi", "gw-nghean", "population", "insurance"} <= logs
    leftover = subprocess.run(["pgrep", "-f", str(home)], capture_output=True, text=True)
    assert leftover.stdout.strip() == "", f"processes still running: {leftover.stdout}"

    # a second run on the same home keeps the CA and the certificates still good, and meters only its own calls
    again = subprocess.run(args, capture_output=True, text=True, timeout=240, env=env)
    assert again.returncode == 0, (again.stdout + again.stderr)[-5000:]
    # the first run's calls, in the same hour on the same Redis, are not counted again (issue 16)
    again_counted = re.search(r"calls sent (\d+), metered (\d+): equal", again.stdout)
    assert again_counted is not None and again_counted[1] == again_counted[2], again.stdout[-3000:]
    reused = pki.load_cert(pki.CertFiles(MeshPaths(home).gateway_tls("national")).cert)
    assert reused.serial_number == gateway_cert.serial_number


def test_demo_names_a_component_that_fails_to_start(tmp_path: Path) -> None:
    home = tmp_path / "broken"
    (home / "registry").mkdir(parents=True)
    (home / "registry" / "registry.key").write_text("not a key")  # the registry cannot load its signing key
    args = lienthong("demo", "--once", "--home", str(home), "--people", "200", "--registry-port", str(free_port()))
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "LANG": "C.UTF-8"}
    done = subprocess.run(args, capture_output=True, text=True, timeout=120, env=env)
    out = done.stdout + done.stderr
    assert done.returncode != 0
    assert "registry" in out and "could not start" in out, out[-3000:]
