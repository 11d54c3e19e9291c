"""The supervisor behind `lienthong up` (issue 16): a component that dies is shown down and started again with
backoff while the others keep running, and stop_all() stops tier by tier, the highest first."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from lienthong.cli.supervisor import Component, Supervisor
from lienthong.redis_connection import free_port

# a process that notes when SIGTERM reached it and when it left, slowly, as a server finishing its requests would
SLOW_STOP = """
import signal, sys, time
out = open(sys.argv[1], "a")
def stop(*_):
    out.write(f"term {sys.argv[2]} {time.time()}\\n"); out.flush(); time.sleep(0.3)
    out.write(f"exit {sys.argv[2]} {time.time()}\\n"); out.flush(); sys.exit(0)
signal.signal(signal.SIGTERM, stop)
while True:
    time.sleep(0.05)
"""


def _wait(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout  # only to catch a hang
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def _server(name: str, port: int) -> Component:
    argv = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"]
    return Component(name, argv, f"http://127.0.0.1:{port}/")


def test_a_killed_component_comes_back_and_the_others_keep_serving(tmp_path: Path) -> None:
    lines: list[str] = []
    sup = Supervisor(tmp_path / "logs", echo_stream=lines.append)
    a, b = free_port(), free_port()
    try:
        sup.start(_server("a", a))
        sup.start(_server("b", b))
        sup.keep_alive(poll=0.05)
        first = sup.component("a").process
        assert first is not None
        os.kill(first.pid, signal.SIGKILL)
        _wait(lambda: [c.name for c in sup.down()] == ["a"], f"a never shown down: {lines}")
        assert httpx.get(f"http://127.0.0.1:{b}/", timeout=5).status_code == 200  # b serves while a is down
        _wait(lambda: not sup.down(), f"a never came back: {lines}")
        again = sup.component("a")
        assert again.process is not None and again.process.pid != first.pid and again.restarts == 1
        assert httpx.get(f"http://127.0.0.1:{a}/", timeout=5).status_code == 200
        assert any("a is DOWN (exit status -9); restarting in 0.5 s" in line for line in lines), lines
        assert any("a is UP again" in line for line in lines), lines
        assert [c.name for c in sup.components] == ["a", "b"]  # the start order, which stop_all() follows
    finally:
        sup.stop_all()


def test_a_component_that_keeps_failing_is_retried_with_doubling_backoff(tmp_path: Path) -> None:
    marker = tmp_path / "started-once"
    port = free_port()
    # serves the first time; every later start fails at once, as a connector whose database went away would
    script = f"[ -e {marker} ] && exit 3; touch {marker}; exec {sys.executable} -m http.server {port} --bind 127.0.0.1"
    lines: list[str] = []
    sup = Supervisor(tmp_path / "logs", echo_stream=lines.append)
    try:
        sup.start(Component("flaky", ["sh", "-c", script], f"http://127.0.0.1:{port}/"))
        sup.keep_alive(poll=0.05)
        sup.kill9("flaky")
        _wait(lambda: sum("flaky is still DOWN" in line for line in lines) >= 2, f"no retries: {lines}", 30)
        retries = [line for line in lines if "still DOWN" in line]
        assert "exited with status 3" in retries[0] and retries[0].endswith("next try in 1 s\n"), retries
        assert retries[1].endswith("next try in 2 s\n"), retries
        assert [c.name for c in sup.down()] == ["flaky"]
    finally:
        started = time.monotonic()
        sup.stop_all()  # also ends the backoff wait at once
        assert time.monotonic() - started < 5


def test_stop_all_stops_the_highest_tier_first_and_waits_for_it(tmp_path: Path) -> None:
    record = tmp_path / "stops.txt"
    sup = Supervisor(tmp_path / "logs", echo=False)
    for name, tier in (("redis", 0), ("registry", 1), ("gateway", 2), ("connector", 2)):
        sup.start(Component(name, [sys.executable, "-c", SLOW_STOP, str(record), name], tier=tier))
    time.sleep(0.5)  # let each install its SIGTERM handler
    sup.stop_all()
    events = {(kind, name): float(t) for kind, name, t in (line.split() for line in record.read_text().splitlines())}
    assert len(events) == 8, events
    edge_done = max(events["exit", "gateway"], events["exit", "connector"])
    assert abs(events["term", "gateway"] - events["term", "connector"]) < 0.25  # one tier stops together
    assert events["term", "registry"] >= edge_done
    assert events["term", "redis"] >= events["exit", "registry"]
