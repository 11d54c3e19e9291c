"""Runs the mesh's components as separate OS processes, as in production, and stops them all together.

Each line a component prints is echoed with its name as a prefix and kept in its own log file, so a component that
fails to start can be named with its last log lines.
"""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

COLORS = ("36", "33", "35", "32", "34", "31", "96", "93", "95", "92")


class StartFailed(RuntimeError):
    """A component did not become healthy; the message names it and quotes its last log lines."""


@dataclass
class Component:
    name: str
    argv: list[str]
    health_url: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    ca: Path | None = None  # an https health_url is verified with this mesh CA
    client_tls: Path | None = None  # a CertFiles dir presented to a health_url that asks for a client certificate
    process: subprocess.Popen[bytes] | None = None
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=40))


def _verify(component: Component) -> ssl.SSLContext | bool:
    """How a health probe checks the component's certificate: with the mesh CA (and a client certificate) if given."""
    if component.ca is None:
        return True
    from lienthong import pki

    files = pki.CertFiles(component.client_tls) if component.client_tls is not None else None
    return pki.client_context(component.ca, files)


class Supervisor:
    """Start components in order, wait for each to be healthy, stop them in reverse order."""

    def __init__(self, log_dir: Path, *, echo: bool = True, echo_stream: Callable[[str], None] | None = None) -> None:
        self.log_dir = log_dir
        self.echo = echo
        self.write = echo_stream or (lambda line: (sys.stdout.write(line), sys.stdout.flush()))
        self.components: list[Component] = []
        self._lock = threading.Lock()
        self._tty = sys.stdout.isatty()

    def start(self, component: Component, timeout: float = 60.0) -> Component:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **component.env}
        component.process = subprocess.Popen(
            component.argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # Ctrl-C reaches us only; we stop children in order
        )
        self.components.append(component)
        color = COLORS[(len(self.components) - 1) % len(COLORS)]
        threading.Thread(target=self._pump, args=(component, color), daemon=True).start()
        if component.health_url:
            self._wait_healthy(component, timeout)
        return component

    def _pump(self, component: Component, color: str) -> None:
        assert component.process is not None and component.process.stdout is not None
        prefix = f"\x1b[{color}m{component.name:>14}\x1b[0m | " if self._tty else f"{component.name:>14} | "
        with (self.log_dir / f"{component.name}.log").open("ab") as log:
            for raw in iter(component.process.stdout.readline, b""):
                log.write(raw)
                log.flush()
                line = raw.decode("utf-8", "replace").rstrip("\n")
                component.tail.append(line)
                if self.echo:
                    with self._lock:
                        self.write(prefix + line + "\n")

    def _wait_healthy(self, component: Component, timeout: float) -> None:
        assert component.process is not None and component.health_url is not None
        deadline = time.monotonic() + timeout
        last = "no answer yet"
        verify = _verify(component)
        while time.monotonic() < deadline:
            code = component.process.poll()
            if code is not None:
                time.sleep(0.2)  # let the pump read the last lines
                raise StartFailed(self._failure(component, f"exited with status {code}"))
            try:
                r = httpx.get(component.health_url, timeout=1.0, verify=verify)
                if r.status_code == 200:
                    return
                last = f"HTTP {r.status_code}"
            except httpx.HTTPError as exc:
                last = f"{type(exc).__name__}: {exc}"
            time.sleep(0.1)
        what = f"was not healthy at {component.health_url} after {timeout:.0f}s ({last})"
        raise StartFailed(self._failure(component, what))

    def _failure(self, component: Component, what: str) -> str:
        lines = "\n".join(f"    {line}" for line in list(component.tail)[-20:]) or "    (no output)"
        return f"{component.name} {what}. Its last log lines ({self.log_dir / component.name}.log):\n{lines}"

    def check_alive(self) -> Component | None:
        """The first component that has exited, if any."""
        for component in self.components:
            if component.process is not None and component.process.poll() is not None:
                return component
        return None

    def component(self, name: str) -> Component:
        for component in self.components:
            if component.name == name:
                return component
        raise KeyError(f"no component named {name!r}")

    def kill9(self, name: str) -> None:
        """SIGKILL a component's whole process group, as a crash would; it stays in the list for restart()."""
        proc = self.component(name).process
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()

    def restart(self, name: str, timeout: float = 60.0) -> float:
        """Kill a component if it still runs, start it again with the same command; seconds until it is healthy."""
        old = self.component(name)
        self.kill9(name)
        fresh = Component(old.name, old.argv, old.health_url, old.env, old.ca, old.client_tls)
        started = time.monotonic()
        self.start(fresh, timeout)
        self.components.remove(fresh)  # keep the start order, which stop_all() reverses
        self.components[self.components.index(old)] = fresh
        return time.monotonic() - started

    def stop_all(self, timeout: float = 10.0) -> None:
        for component in reversed(self.components):
            proc = component.process
            if proc is None or proc.poll() is not None:
                continue
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
        deadline = time.monotonic() + timeout
        for component in reversed(self.components):
            proc = component.process
            if proc is None:
                continue
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.components.clear()
