"""Real processes for tests: start a command, wait until it answers over HTTP, show its log when it fails."""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from lienthong.redis_connection import free_port

VENV_BIN = Path(sys.executable).parent


class Proc:
    """A child process whose output goes to a log file, killed at the end of the test."""

    def __init__(self, name: str, args: list[str], log_dir: Path, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.args = args
        self.log_path = log_dir / f"{name}.log"
        self.env = {**os.environ, **(env or {})}
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Proc:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            self.args, stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
        )
        return self

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    def wait_http(
        self, url: str, timeout: float = 30.0, status: int = 200, verify: ssl.SSLContext | bool = True
    ) -> None:
        """Until `url` answers `status`; an https URL is verified with `verify` (a mesh CA's pki.client_context)."""
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                r = httpx.get(url, timeout=1.0, verify=verify)
                if r.status_code == status:
                    return
                last = f"{r.status_code} {r.text[:200]}"
            except httpx.HTTPError as exc:
                last = repr(exc)
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} did not answer {url} within {timeout}s ({last}):\n{self.log_tail()}")

    def kill9(self) -> None:
        """SIGKILL the whole process group, as a crash would."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


def requests_session(verify: ssl.SSLContext | bool) -> Any:
    """A requests.Session (schemathesis' transport) verifying https peers with `verify`, a mesh CA's context: by
    chain, not host name (mesh certificates name their holder by URI SAN), as every mesh client does."""
    import requests
    from requests.adapters import HTTPAdapter

    class MeshCA(HTTPAdapter):
        def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
            if isinstance(verify, ssl.SSLContext):
                kwargs.update(ssl_context=verify, assert_hostname=False)
            super().init_poolmanager(*args, **kwargs)

    session = requests.Session()
    session.mount("https://", MeshCA())
    return session


def lienthong(*args: str) -> list[str]:
    """argv for the installed `lienthong` command of this virtualenv."""
    return [str(VENV_BIN / "lienthong"), *args]


@contextmanager
def ops_api(factory: str, data_dir: Path, redis_url: str) -> Iterator[str]:
    """A gateway's operations API alone under uvicorn (`factory` reads OPS_TEST_DIR/OPS_TEST_REDIS); yields its base."""
    port = free_port()
    proc = Proc(
        factory.rsplit(":", 1)[-1],
        [sys.executable, "-m", "uvicorn", "--factory", factory, "--port", str(port)],
        data_dir,
        env={"OPS_TEST_DIR": str(data_dir), "OPS_TEST_REDIS": redis_url},
    ).start()
    base = f"http://127.0.0.1:{port}/ops/v1"
    try:
        proc.wait_http(f"{base}/dashboard")  # served without a token; the API itself needs one
        yield base
    finally:
        proc.stop()
