"""Runs the mesh's components as separate OS processes, as in production, keeps them running, and stops them in order.

Each line a component prints is echoed with its name as a prefix and kept in its own log file, so a component that
fails to start can be named with its last log lines.

Once `keep_alive()` is called, a component that exits is shown as down and started again with backoff (0.5 s,
doubling to 30 s; back to 0.5 s once it has run a minute), while the others keep serving: one crashed connector is
the outage an operator rehearses, not the end of the mesh. `stop_all()` stops by tier, highest first (`up`: gateways
and connectors, then the registry, then Redis), so nothing loses what it depends on while it shuts down.
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
BACKOFF_FIRST = 0.5
BACKOFF_CAP = 30.0
STABLE_AFTER = 60.0  # a component up this long before it crashes starts its backoff over


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
    tier: int = 0  # stop_all() stops higher tiers first, and waits for them before the next
    ready: Callable[[], bool] | None = None  # a health probe for a component that speaks no HTTP (Redis)
    down_since: float | None = None  # monotonic time it was found down; None while it runs
    restarts: int = 0
    started_at: float = 0.0
    backoff: float = BACKOFF_FIRST


def _verify(component: Component) -> ssl.SSLContext | bool:
    """How a health probe checks the component's certificate: with the mesh CA (and a client certificate) if given."""
    if component.ca is None:
        return True
    from lienthong import pki

    files = pki.CertFiles(component.client_tls) if component.client_tls is not None else None
    return pki.client_context(component.ca, files)


class Supervisor:
    """Start components in order, wait for each to be healthy, restart the ones that die, stop them by tier."""

    def __init__(self, log_dir: Path, *, echo: bool = True, echo_stream: Callable[[str], None] | None = None) -> None:
        self.log_dir = log_dir
        self.echo = echo
        self.write = echo_stream or (lambda line: (sys.stdout.write(line), sys.stdout.flush()))
        self.components: list[Component] = []
        self._lock = threading.Lock()  # one echoed line at a time
        self._spawn_lock = threading.Lock()  # no restart spawns a process once stop_all() has begun
        self._stopping = threading.Event()
        self._reviving: set[str] = set()
        self._tty = sys.stdout.isatty()

    def start(self, component: Component, timeout: float = 60.0) -> Component:
        return self.start_all([component], timeout)[0]

    def start_all(self, components: list[Component], timeout: float = 60.0) -> list[Component]:
        """Start components that do not need each other all at once, then wait until each is healthy: their
        start-ups (imports, TLS set-up, first registry calls) overlap instead of adding up."""
        for component in components:
            self._spawn(component)
            self.components.append(component)
        for component in components:
            self._wait_healthy(component, timeout)
        return components

    def _spawn(self, component: Component) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **component.env}
        with self._spawn_lock:
            if self._stopping.is_set():
                raise StartFailed(f"{component.name} not started: the mesh is stopping")
            component.process = subprocess.Popen(
                component.argv,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # a terminal's Ctrl-C reaches us only; we stop children in order
            )
        component.started_at = time.monotonic()
        index = next((i for i, c in enumerate(self.components) if c.name == component.name), len(self.components))
        color = COLORS[index % len(COLORS)]
        threading.Thread(target=self._pump, args=(component, component.process, color), daemon=True).start()

    def _pump(self, component: Component, process: subprocess.Popen[bytes], color: str) -> None:
        assert process.stdout is not None
        prefix = f"\x1b[{color}m{component.name:>14}\x1b[0m | " if self._tty else f"{component.name:>14} | "
        with (self.log_dir / f"{component.name}.log").open("ab") as log:
            for raw in iter(process.stdout.readline, b""):
                log.write(raw)
                log.flush()
                line = raw.decode("utf-8", "replace").rstrip("\n")
                component.tail.append(line)
                if self.echo:
                    self.say(prefix + line)

    def say(self, line: str) -> None:
        """One line on the console, never interleaved with a component's."""
        with self._lock:
            self.write(line + "\n")

    def _healthy(self, component: Component, verify: ssl.SSLContext | bool) -> str | None:
        """None when healthy, else what the probe saw."""
        if component.ready is not None:
            return None if component.ready() else "not ready yet"
        if component.health_url is None:
            return None
        try:
            r = httpx.get(component.health_url, timeout=1.0, verify=verify)
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__}: {exc}"
        return None if r.status_code == 200 else f"HTTP {r.status_code}"

    def _wait_healthy(self, component: Component, timeout: float) -> None:
        process = component.process
        assert process is not None
        deadline = time.monotonic() + timeout
        last: str | None = "no answer yet"
        verify = _verify(component)
        while time.monotonic() < deadline:
            code = process.poll()
            if code is not None:
                time.sleep(0.2)  # let the pump read the last lines
                raise StartFailed(self._failure(component, f"exited with status {code}"))
            last = self._healthy(component, verify)
            if last is None:
                return
            if self._stopping.wait(0.1):
                raise StartFailed(f"{component.name} not healthy: the mesh is stopping")
        where = f" at {component.health_url}" if component.health_url else ""
        raise StartFailed(self._failure(component, f"was not healthy{where} after {timeout:.0f}s ({last})"))

    def _failure(self, component: Component, what: str) -> str:
        lines = "\n".join(f"    {line}" for line in list(component.tail)[-20:]) or "    (no output)"
        return f"{component.name} {what}. Its last log lines ({self.log_dir / component.name}.log):\n{lines}"

    # ---- keeping the mesh up ------------------------------------------------------------------------------------

    def keep_alive(self, poll: float = 0.2) -> None:
        """From now on, a component that exits is shown as down and started again with backoff, until stop_all()."""
        threading.Thread(target=self._watch, args=(poll,), daemon=True).start()

    def _watch(self, poll: float) -> None:
        while not self._stopping.wait(poll):
            for component in list(self.components):
                proc = component.process
                if proc is None or proc.poll() is None or component.name in self._reviving:
                    continue
                self._reviving.add(component.name)
                threading.Thread(target=self._revive, args=(component,), daemon=True).start()

    def _revive(self, component: Component) -> None:
        proc = component.process
        assert proc is not None
        now = time.monotonic()
        component.down_since = now
        if now - component.started_at >= STABLE_AFTER:
            component.backoff = BACKOFF_FIRST
        _kill_group(proc)  # what it left behind (a gateway's workers) would hold its port
        delay = component.backoff
        self.say(f"lienthong {component.name} is DOWN (exit status {proc.returncode}); restarting in {delay:g} s")
        while not self._stopping.wait(delay):
            delay = min(delay * 2, BACKOFF_CAP)
            component.backoff = delay
            try:
                self._spawn(component)
                self._wait_healthy(component, 60.0)
            except StartFailed as exc:
                if self._stopping.is_set():
                    break
                if component.process is not None:
                    _kill_group(component.process)
                first = str(exc).splitlines()[0]
                self.say(f"lienthong {component.name} is still DOWN ({first}); next try in {delay:g} s")
                continue
            down = time.monotonic() - (component.down_since or now)
            component.restarts += 1
            component.down_since = None
            self.say(f"lienthong {component.name} is UP again after {down:.1f} s down (restart {component.restarts})")
            break
        self._reviving.discard(component.name)

    def down(self) -> list[Component]:
        """The components down right now: exited, or restarting and not yet healthy."""
        return [c for c in self.components if c.down_since is not None or (c.process and c.process.poll() is not None)]

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
        if proc is not None:
            _kill_group(proc)

    def restart(self, name: str, timeout: float = 60.0) -> float:
        """Kill a component if it still runs, start it again with the same command; seconds until it is healthy."""
        component = self.component(name)
        self.kill9(name)
        started = time.monotonic()
        self._spawn(component)
        self._wait_healthy(component, timeout)
        return time.monotonic() - started

    def stop_all(self, timeout: float = 10.0) -> None:
        """SIGTERM tier by tier, highest first, waiting for each tier (SIGKILL after `timeout`) before the next."""
        with self._spawn_lock:
            self._stopping.set()
        for tier in sorted({c.tier for c in self.components}, reverse=True):
            group = [c.process for c in reversed(self.components) if c.tier == tier and c.process is not None]
            for proc in group:
                if proc.poll() is None:
                    try:
                        os.killpg(proc.pid, signal.SIGTERM)
                    except ProcessLookupError:
                        pass
            deadline = time.monotonic() + timeout
            for proc in group:
                try:
                    proc.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    pass
                _kill_group(proc)  # a child it left behind
        self.components.clear()


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()
