"""The steady mixed load of the chaos run, and the client's own record of every answer it saw.

Each worker thread cycles through the targets (consumer, home gateway, service, path, purpose) with a signed
MeshClient over HTTPS (the gateways verified with the mesh CA) and records, per call: the target, the HTTP status
(None when no answer came: the process it talked to was killed), the mesh error code, the X-Road-Id echoed by the
gateway and how long the call took. These records are the truth the meter counts and audit records are held against.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from lienthong import keys
from lienthong.mesh_client import MeshClient, tls_http

CLIENT_TIMEOUT = 30.0  # far above every mesh timeout, so a hung call shows as a long duration, not a client timeout


@dataclass(frozen=True)
class Target:
    consumer: str
    home: str
    service: str
    path: str  # provider path, e.g. /persons/001...
    purpose: str
    host: str  # the gateway hosting the service

    @property
    def label(self) -> str:
        return f"{self.consumer} -> {self.service}"


@dataclass(frozen=True)
class Seen:
    target: Target
    status: int | None  # None: no HTTP answer (connection refused or reset by a killed process)
    error: str | None  # X-Road-Error, or the transport error's class name
    txid: str | None
    seconds: float
    at: float


@dataclass
class Recorder:
    """Thread-safe list of what the clients saw."""

    seen: list[Seen] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, item: Seen) -> None:
        with self._lock:
            self.seen.append(item)

    def snapshot(self) -> list[Seen]:
        with self._lock:
            return list(self.seen)


class Caller:
    """One MeshClient per (consumer, home gateway), made on first use and kept for its keep-alive connections."""

    def __init__(self, gateway_urls: dict[str, str], key_files: dict[str, str], kids: dict[str, str], ca: Path) -> None:
        self.gateway_urls = gateway_urls
        self.key_files = key_files
        self.kids = kids
        self.ca = ca  # the mesh CA the gateways' certificates are verified with
        self._clients: dict[tuple[str, str], MeshClient] = {}

    def client(self, target: Target) -> MeshClient:
        key = (target.consumer, target.home)
        if key not in self._clients:
            self._clients[key] = MeshClient(
                self.gateway_urls[target.home], target.home, target.consumer,
                keys.load_private(self.key_files[target.consumer]), kid=self.kids[target.consumer],
                http=tls_http(self.ca, timeout=CLIENT_TIMEOUT),
            )  # fmt: skip
        return self._clients[key]

    def call(self, target: Target, recorder: Recorder) -> Seen:
        started = time.monotonic()
        try:
            r = self.client(target).call("GET", target.service + target.path, target.purpose)
        except httpx.HTTPError as exc:
            item = Seen(target, None, type(exc).__name__, None, time.monotonic() - started, time.time())
        else:
            item = Seen(target, r.status_code, r.headers.get("x-road-error"), r.headers.get("x-road-id"),
                        time.monotonic() - started, time.time())  # fmt: skip
        recorder.add(item)
        return item

    def close(self) -> None:
        for c in self._clients.values():
            c.close()


class Load:
    """`threads` workers calling the targets round-robin, `pause` seconds between calls, until stop()."""

    def __init__(self, make_caller: Callable[[], Caller], targets: list[Target], recorder: Recorder,
                 threads: int = 3, pause: float = 0.02) -> None:  # fmt: skip
        self.make_caller = make_caller
        self.targets = targets
        self.recorder = recorder
        self.threads = threads
        self.pause = pause
        self._stop = threading.Event()
        self._workers: list[threading.Thread] = []

    def start(self) -> Load:
        for i in range(self.threads):
            t = threading.Thread(target=self._work, args=(i,), name=f"chaos-load-{i}", daemon=True)
            t.start()
            self._workers.append(t)
        return self

    def _work(self, index: int) -> None:
        caller = self.make_caller()
        n = index
        try:
            while not self._stop.is_set():
                target = self.targets[n % len(self.targets)]
                n += 1
                item = caller.call(target, self.recorder)
                if item.status is None:
                    time.sleep(0.05)  # a dead process refuses at once: do not spin
                elif self.pause:
                    time.sleep(self.pause)
        finally:
            caller.close()

    def stop(self) -> None:
        """Stop after the calls in flight have answered (each is bounded by CLIENT_TIMEOUT)."""
        self._stop.set()
        for t in self._workers:
            t.join(CLIENT_TIMEOUT + 5)


def successes(seen: list[Seen]) -> Counter[tuple[str, str]]:
    """(service, consumer) -> answers below 400, the meter's `2xx` outcome."""
    return Counter((s.target.service, s.target.consumer) for s in seen if s.status is not None and s.status < 400)
