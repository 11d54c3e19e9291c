"""`lienthong up`: a taken port is replaced and named, and Ctrl-C stops every process of the mesh (issue 5)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from lienthong.redis_connection import free_port
from tests.procs import lienthong


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
        running = subprocess.run(["pgrep", "-f", str(home)], capture_output=True, text=True).stdout.split()
        assert len(running) >= 8  # redis, registry, 3 gateways, 4 connectors (gateway workers may add more)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        busy.close()
    leftover = subprocess.run(["pgrep", "-f", str(home)], capture_output=True, text=True).stdout.strip()
    assert leftover == "", f"processes left running after Ctrl-C: {leftover}"
