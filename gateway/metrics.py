"""Prometheus metrics of a gateway, safe across its worker processes.

`lienthong gateway serve` points PROMETHEUS_MULTIPROC_DIR at `<data-dir>/metrics` (emptied at start) before the
workers exist, so every worker writes its own mmap files and `/metrics` on any worker sums them all. Without that
variable (a single process under a test harness) the default per-process registry is used.
"""

from __future__ import annotations

import asyncio
import collections
import os
from bisect import bisect_left
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

from lienthong.snapshot import QUARANTINE_KINDS, Snapshot

REQUESTS = Counter(
    "lienthong_gateway_requests",
    "Calls answered on /r1, by role, status class and mesh error code (empty when the provider answered)",
    ["role", "status", "error"],
)
LATENCY = Histogram(
    "lienthong_gateway_request_seconds",
    "Time from request in to response out on /r1",
    ["role"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
UPSTREAM = Histogram(
    "lienthong_gateway_upstream_seconds",
    "Time spent waiting on the connector or the hosting gateway",
    ["kind"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
SNAPSHOT_VERSION = Gauge(
    "lienthong_gateway_snapshot_version", "Version of the configuration snapshot in use", multiprocess_mode="max"
)
SNAPSHOT_CONFIRMED = Gauge(
    "lienthong_gateway_snapshot_confirmed_timestamp_seconds",
    "When the registry last confirmed the snapshot in use",
    multiprocess_mode="max",
)
QUARANTINED = Gauge(
    "lienthong_gateway_quarantined",
    "Entries of the snapshot in use that this gateway could not build and left out (their calls fail closed), by kind",
    ["kind"],
    multiprocess_mode="livemax",
)
TLS_REFUSALS = Counter(
    "lienthong_gateway_tls_refusals",
    "Connections refused at TLS: a failed handshake (unknown CA, expired, not yet valid, protocol, ...) or plaintext "
    "on a TLS port, by reason",
    ["reason"],
)
UPSTREAM_TLS = Counter(
    "lienthong_gateway_upstream_tls_handshakes",
    "TLS connections this gateway opened to connectors and hosting gateways (kept alive, so none in a steady state), "
    "by whether the handshake resumed a session",
    ["resumed"],
)
UPSTREAM_TLS_REFUSALS = Counter(
    "lienthong_gateway_upstream_tls_refusals",
    "TLS connections this gateway opened and refused: the peer's certificate for another identity, revoked, expired, "
    "not yet valid, from an unknown CA, another handshake failure, or the peer refusing this gateway's certificate",
    ["reason"],
)


def snapshot_installed(snapshot: Snapshot) -> None:
    """A new snapshot is in use: its version, confirmation time and quarantined entries, set once per version."""
    SNAPSHOT_VERSION.set(snapshot.version)
    SNAPSHOT_CONFIRMED.set(snapshot.received_at)
    counts = collections.Counter(q.kind for q in snapshot.quarantined)
    for kind in QUARANTINE_KINDS:
        QUARANTINED.labels(kind).set(counts[kind])


def render() -> tuple[bytes, str]:
    flush()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST


class Timing:
    """One histogram child's observations, folded in memory until the next flush."""

    __slots__ = ("bounds", "child", "counts", "total")

    def __init__(self, child: Any) -> None:
        self.child = child
        self.bounds: tuple[float, ...] = tuple(child._upper_bounds)
        self.counts = [0] * len(self.bounds)
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        self.total += seconds
        self.counts[bisect_left(self.bounds, seconds)] += 1  # the first bound >= seconds; the last one is +Inf

    def flush(self) -> None:
        # the child's own observe() adds one to one bucket and to the sum; this adds n and the sum of n at once
        if self.total:
            self.child._sum.inc(self.total)
            self.total = 0.0
        for i, n in enumerate(self.counts):
            if n:
                self.child._buckets[i].inc(n)
                self.counts[i] = 0


def _timing(histogram: Histogram, label: str) -> Timing:
    timing = Timing(histogram.labels(label))
    _timings.append(timing)
    return timing


# Each update of a prometheus value takes a lock and writes its mmap'd file, several per call; the hot path counts in
# memory instead and flush() hands the totals over once a second and before every /metrics answer.
_counted: dict[tuple[str, int, str], int] = {}
_timed: dict[str, Timing] = {}
_timings: list[Timing] = []  # every Timing made, for flush()
UPSTREAM_CONNECTOR = _timing(UPSTREAM, "connector")
UPSTREAM_GATEWAY = _timing(UPSTREAM, "gateway")
FLUSH_INTERVAL = 1.0


def count(role: str, status: int, error: str, seconds: float) -> None:
    """One answered call."""
    key = (role, status // 100, error)
    _counted[key] = _counted.get(key, 0) + 1
    timer = _timed.get(role)
    if timer is None:
        timer = _timed[role] = _timing(LATENCY, role)
    timer.observe(seconds)


def flush() -> None:
    """Hand this worker's counts to prometheus."""
    for (role, status, error), n in _counted.items():
        REQUESTS.labels(role, f"{status}xx", error).inc(n)
    _counted.clear()
    for timer in _timings:
        timer.flush()


async def flush_forever() -> None:
    while True:
        await asyncio.sleep(FLUSH_INTERVAL)
        flush()
