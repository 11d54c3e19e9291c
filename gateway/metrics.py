"""Prometheus metrics of a gateway, safe across its worker processes.

`lienthong gateway serve` points PROMETHEUS_MULTIPROC_DIR at `<data-dir>/metrics` (emptied at start) before the
workers exist, so every worker writes its own mmap files and `/metrics` on any worker sums them all. Without that
variable (a single process under a test harness) the default per-process registry is used.

Calls are counted by outcome class (policies/outcome.py) and labelled with their service and consumer. Those two
are bounded (`TopN`): each worker gives its own label to the TOP_N names with the most calls since it started (env
LIENTHONG_METRICS_TOP_N, default 20) and counts the rest as "other", so a mesh of 10,000 consumers cannot make
10,000 series. Gauges that describe state (snapshot, certificate, spool backlog, connectors) are set from `Local`
(gateway/ops_components.py) by every worker at each flush, once a second and before every scrape, not only when some
event happens: a gauge set only on an event reads 0 in any worker the event has not reached yet (a worker that
installed its snapshot before the gauge's file existed, or one restarted after it: /readyz used to be the only other
setter).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import time
from bisect import bisect_left
from collections.abc import Callable
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
from policies.meter import UNIDENTIFIED
from policies.outcome import classify

log = logging.getLogger("lienthong.gateway.metrics")
TOP_N = int(os.environ.get("LIENTHONG_METRICS_TOP_N", "20"))
OTHER = "other"
NONE = "none"  # no service: refused before routing
REQUESTS = Counter(
    "lienthong_gateway_requests",
    "Calls answered on /r1, by role, status class, mesh error code (empty when the provider answered), outcome class "
    "(found, no-data, not-permitted, client-error, provider-failure, platform-failure), and service and consumer "
    "(the top N by volume, the rest as other)",
    ["role", "status", "error", "outcome", "service", "consumer"],
)
LATENCY = Histogram(
    "lienthong_gateway_request_seconds",
    "Time from request in to response out on /r1, by role, service and consumer (top N, the rest as other)",
    ["role", "service", "consumer"],
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
CERT_EXPIRY = Gauge(
    "lienthong_gateway_certificate_expiry_seconds",
    "Seconds until this gateway's TLS certificate expires (renewed at two thirds of its life)",
    multiprocess_mode="mostrecent",
)
SPOOL_BACKLOG = Gauge(
    "lienthong_gateway_spool_backlog_bytes",
    "Bytes in this gateway's local spools not yet shipped, by spool (meter: to Redis, txlog: to the store)",
    ["spool"],
    multiprocess_mode="livesum",
)
CONNECTOR_UP = Gauge(
    "lienthong_gateway_connector_up",
    "A connector hosted here as this gateway sees it: 0 while its circuit is open or its last call failed (timed "
    "out, refused), else 1 (also before any call)",
    ["service"],
    multiprocess_mode="livemin",
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


# Gauges describing state: each worker sets them from its own view at every flush (see the module's docstring).
_state_hooks: list[Callable[[], None]] = []


def watch_state(hook: Callable[[], None]) -> None:
    _state_hooks.append(hook)


def set_state(local: Any) -> None:
    """The state gauges from one worker's `Local` (gateway/ops_components.py)."""
    snap = local.snapshot_getter()
    if snap is not None:
        SNAPSHOT_VERSION.set(snap.version)
        SNAPSHOT_CONFIRMED.set(local.confirmed_at() or snap.received_at)
    expires = local.certificate_expires_at()
    if expires is not None:
        CERT_EXPIRY.set(expires - time.time())
    for name, n in local.spools().items():
        SPOOL_BACKLOG.labels(name).set(n)
    for c in local.connectors():
        CONNECTOR_UP.labels(c["service"]).set(0 if c["status"] == "down" else 1)  # bounded: connectors hosted here


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
class TopN:
    """Bounded label values: a name keeps its own label while it is among the `limit` names with the most calls in
    this worker (ranked again at each flush), others count as "other". A name that drops out keeps the series it
    has (counters cannot be removed) but new calls go to "other", so the series stay near `limit`."""

    def __init__(self, limit: int, missing: str = NONE) -> None:
        self.limit = limit
        self.missing = missing
        self.volume: collections.Counter[str] = collections.Counter()
        self.admitted: set[str] = set()

    def label(self, name: str | None, n: int = 1) -> str:
        if not name:
            return self.missing
        if n:
            self.volume[name] += n
        if name in self.admitted:
            return name
        if len(self.admitted) < self.limit:
            self.admitted.add(name)
            return name
        return OTHER

    def rerank(self) -> None:
        if len(self.volume) > self.limit:
            self.admitted = {name for name, _ in self.volume.most_common(self.limit)}
            if len(self.volume) > 50 * self.limit:  # forget the long tail's counts: memory stays bounded too
                self.volume = collections.Counter(dict(self.volume.most_common(10 * self.limit)))


_SERVICES = TopN(TOP_N)
_CONSUMERS = TopN(TOP_N, UNIDENTIFIED)  # refused before the client was known, as the meter names it
_counted: dict[tuple[str, int, str, str, str, str], int] = {}
_timed: dict[tuple[str, str, str], Timing] = {}
_timings: list[Timing] = []  # every Timing made, for flush()
UPSTREAM_CONNECTOR = _timing(UPSTREAM, "connector")
UPSTREAM_GATEWAY = _timing(UPSTREAM, "gateway")
FLUSH_INTERVAL = 1.0


def count(role: str, status: int, error: str, seconds: float, call: Any = None) -> None:
    """One answered call; `call` its policies.base.CallContext once routed (service, consumer, no-data statuses)."""
    endpoint = getattr(call, "endpoint", None)
    outcome = classify(status, error or None, getattr(endpoint, "no_data", None) or frozenset())
    service = _SERVICES.label(getattr(call, "service_id", None))
    consumer = _CONSUMERS.label(getattr(call, "client", None))
    key = (role, status // 100, error, outcome, service, consumer)
    _counted[key] = _counted.get(key, 0) + 1
    timer = _timed.get((role, service, consumer))
    if timer is None:
        timer = _timed[(role, service, consumer)] = Timing(LATENCY.labels(role, service, consumer))
        _timings.append(timer)
    timer.observe(seconds)


def flush() -> None:
    """Hand this worker's counts to prometheus and set its state gauges."""
    for (role, status, error, outcome, service, consumer), n in _counted.items():
        REQUESTS.labels(role, f"{status}xx", error, outcome, service, consumer).inc(n)
    _counted.clear()
    for timer in _timings:
        timer.flush()
    _SERVICES.rerank()
    _CONSUMERS.rerank()
    for hook in _state_hooks:
        try:
            hook()
        except Exception:  # a gauge must never stop the counts' flush
            log.exception("a state gauge could not be set")


async def flush_forever() -> None:
    while True:
        await asyncio.sleep(FLUSH_INTERVAL)
        flush()
