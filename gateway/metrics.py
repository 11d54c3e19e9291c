"""Prometheus metrics of a gateway, safe across granian's worker processes.

`lienthong gateway serve` points PROMETHEUS_MULTIPROC_DIR at `<data-dir>/metrics` (emptied at start) before the
workers exist, so every worker writes its own mmap files and `/metrics` on any worker sums them all. Without that
variable (a single process under a test harness) the default per-process registry is used.
"""

from __future__ import annotations

import os
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
# bound once: labels() costs more than the observation itself
UPSTREAM_CONNECTOR = UPSTREAM.labels("connector")
UPSTREAM_GATEWAY = UPSTREAM.labels("gateway")
SNAPSHOT_VERSION = Gauge(
    "lienthong_gateway_snapshot_version", "Version of the configuration snapshot in use", multiprocess_mode="max"
)
SNAPSHOT_CONFIRMED = Gauge(
    "lienthong_gateway_snapshot_confirmed_timestamp_seconds",
    "When the registry last confirmed the snapshot in use",
    multiprocess_mode="max",
)


def render() -> tuple[bytes, str]:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST


def status_class(status: int) -> str:
    return f"{status // 100}xx"


_counted: dict[tuple[str, int, str], Any] = {}
_timed: dict[str, Any] = {}


def count(role: str, status: int, error: str, seconds: float) -> None:
    """One answered call; label children are cached because labels() costs more than the increment itself."""
    key = (role, status // 100, error)
    child = _counted.get(key)
    if child is None:
        child = _counted[key] = REQUESTS.labels(role, status_class(status), error)
    child.inc()
    timer = _timed.get(role)
    if timer is None:
        timer = _timed[role] = LATENCY.labels(role)
    timer.observe(seconds)
