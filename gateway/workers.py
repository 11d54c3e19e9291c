"""A gateway process: one listening socket (two with --ops-listen: the operations API and /metrics get their own),
N forked worker processes serving it, each with its own event loop. The TLS context (from --tls-dir; none with
--insecure-http) is built before the fork, so all workers share its session ticket keys.

The parent binds the port (so a taken port fails at once, with its name), forks the workers, restarts one that
dies, and on SIGTERM or SIGINT asks every worker to finish its calls in flight and stop. Workers are forked before
the app is built, so each builds its own (its own worker slot for the meter spool and audit chain, its own
upstream pool); the settings reach them through the LIENTHONG_* environment as they reach any process.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import resource
import signal
import socket
import ssl
import sys
import time
from collections.abc import Callable

import uvloop

from gateway.settings import GatewaySettings
from lienthong.pki import server_context
from policies.authn import share_replay_cache

log = logging.getLogger("lienthong.gateway.workers")

RESTART_WINDOW = 10.0  # a worker that dies sooner than this after its start counts as failing to start
MAX_QUICK_DEATHS = 5
STOP_GRACE = 15.0
GC_THRESHOLD = 20_000
BACKLOG = 2048


def listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise SystemExit(f"gateway: cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(BACKLOG)
    sock.set_inheritable(True)
    return sock


def raise_fd_limit() -> None:
    """Idle keep-alive clients each hold a descriptor; take all the hard limit allows."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def serve(settings: GatewaySettings) -> None:
    """Run the gateway until SIGTERM/SIGINT; returns once every worker has stopped."""
    raise_fd_limit()
    sock = listen(settings.host, settings.port)
    address = settings.ops_address
    try:
        ops_sock = listen(*address) if address is not None else None
    except SystemExit:
        sock.close()
        raise
    # Made before the fork, so that every worker holds the same session ticket keys: a client resumes its TLS session
    # whichever worker accepts its next connection (a hop then costs no full handshake in the steady state).
    tls = None if settings.insecure_http else server_context(settings.cert_files, "optional")
    share_replay_cache()  # before the fork too: an assertion accepted by one worker is a replay at every other
    supervisor = _Supervisor(lambda: _worker_main(sock, ops_sock, tls), settings.workers)
    try:
        supervisor.run()
    finally:
        sock.close()
        if ops_sock is not None:
            ops_sock.close()


class _Supervisor:
    def __init__(self, target: Callable[[], None], count: int) -> None:
        self.target = target
        self.count = count
        self.children: dict[int, float] = {}  # pid -> started (monotonic)
        self.stopping = False
        self.quick_deaths = 0

    def _spawn(self) -> None:
        pid = os.fork()
        if pid == 0:  # the worker
            code = 0
            try:
                self.target()
            except SystemExit as exc:
                code = 0 if exc.code is None else exc.code if isinstance(exc.code, int) else 1
            except BaseException:
                log.exception("gateway worker failed")
                code = 1
            finally:
                logging.shutdown()
                os._exit(code)
        self.children[pid] = time.monotonic()

    def _on_signal(self, signum: int, frame: object) -> None:
        del frame
        if not self.stopping:
            self.stopping = True
            for pid in self.children:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)

    def run(self) -> None:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        for _ in range(self.count):
            self._spawn()
        stop_deadline: float | None = None
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                if self.stopping:
                    stop_deadline = stop_deadline or time.monotonic() + STOP_GRACE
                    if time.monotonic() > stop_deadline:
                        for child in self.children:
                            with contextlib.suppress(ProcessLookupError):
                                os.kill(child, signal.SIGKILL)
                time.sleep(0.1)
                continue
            started = self.children.pop(pid, None)
            if started is None or self.stopping:
                continue
            code = os.waitstatus_to_exitcode(status)
            lived = time.monotonic() - started
            log.warning("gateway worker %d exited (%s) after %.1f s; starting another", pid, code, lived)
            self.quick_deaths = self.quick_deaths + 1 if lived < RESTART_WINDOW else 0
            if self.quick_deaths >= MAX_QUICK_DEATHS:
                log.error("gateway workers keep failing at start; giving up")
                self._on_signal(signal.SIGTERM, None)
                sys.exit(1)
            self._spawn()


def _worker_main(sock: socket.socket, ops_sock: socket.socket | None, tls: ssl.SSLContext | None) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the parent, which stops the workers in order
    uvloop.run(_worker(sock, ops_sock, tls))


async def _worker(sock: socket.socket, ops_sock: socket.socket | None, tls: ssl.SSLContext | None) -> None:
    from gateway.app import create_app
    from gateway.http_server import Server

    app = create_app()
    await app.startup()
    # What start-up built lives as long as the worker: keep it out of every collection, and collect the young
    # generation less often (a call allocates a few dozen short-lived objects, none in cycles that matter).
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, 20, 20)
    loop = asyncio.get_running_loop()
    # one context for both ports: the client certificate is optional here, and the mesh hop's requirement (a gateway
    # certificate) is checked per call against the assertion (gateway.calls). The certificate is read again here: a
    # worker restarted after a renewal must not serve the one the parent read at start. Renewal reloads it later.
    if tls is not None:
        files = app.settings.cert_files
        tls.load_cert_chain(files.cert, files.key)
    app.start_renewal([tls] if tls is not None else [])
    servers = [(Server(app, loop, tls=tls), sock)]
    if ops_sock is not None:
        servers.append((Server(app.ops_listener(), loop, tls=tls), ops_sock))
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    try:
        for server, listening in servers:
            await server.start(listening)
        await stop.wait()
    finally:
        for server, _ in servers:
            await server.stop()
        await app.shutdown()
