"""A circuit breaker per upstream: closed, open (answer 503 at once), half-open (let one probe through).

State is per worker process on purpose: it is a local protection against piling requests onto a dead upstream,
not a shared view, and keeping it local costs nothing on the hot path. Each breaker also keeps what the operations
API's component health needs (gateway/ops_components.py, through the heartbeat): when the upstream last answered and
last failed, and its failures and timeouts of the last RECENT_SECONDS.
"""

from __future__ import annotations

import collections
import time
from typing import Any, Literal

from lienthong.problem import Problem

State = Literal["closed", "open", "half-open"]
RECENT_SECONDS = 300.0
MAX_RECENT = 1000  # failure times kept per breaker: enough to count a 5-minute storm, bounded memory


class CircuitBreaker:
    def __init__(self, name: str, failures_to_open: int, open_seconds: float) -> None:
        self.name = name
        self.failures_to_open = failures_to_open
        self.open_seconds = open_seconds
        self.failures = 0
        self.opened_at = 0.0
        self.state: State = "closed"
        self._probing = False
        self.last_success = 0.0  # wall-clock times, for the heartbeat (0: never)
        self.last_failure = 0.0
        self.last_failure_kind = ""
        self._recent: collections.deque[tuple[float, bool]] = collections.deque(maxlen=MAX_RECENT)  # (time, timeout)

    def before_call(self, now: float | None = None) -> None:
        """Raise 503 circuit-open unless this call may go to the upstream."""
        if self.state == "closed":
            return
        t = now if now is not None else time.monotonic()
        if self.state == "open" and t - self.opened_at >= self.open_seconds:
            self.state = "half-open"
            self._probing = False
        if self.state == "half-open" and not self._probing:
            self._probing = True
            return
        retry = max(1, int(self.open_seconds - (t - self.opened_at)) + 1)
        raise Problem(
            503,
            "circuit-open",
            f"upstream {self.name} failed {self.failures} times in a row; its circuit is open, try again later",
            headers={"Retry-After": str(retry)},
        )

    def success(self) -> None:
        self.failures = 0
        self.state = "closed"
        self._probing = False
        self.last_success = time.time()

    def failure(self, now: float | None = None, timeout: bool = False) -> None:
        """One failed call; `timeout` when the upstream did not answer in time (else refused, broken or garbage)."""
        wall = time.time()
        self.last_failure, self.last_failure_kind = wall, "timeout" if timeout else "failure"
        self._recent.append((wall, timeout))
        self.failures += 1
        if self.state == "half-open" or self.failures >= self.failures_to_open:
            self.state = "open"
            self.opened_at = now if now is not None else time.monotonic()
            self._probing = False

    def report(self, now: float | None = None) -> dict[str, Any]:
        """What the heartbeat carries: state, last success and failure (epoch seconds, None: never), and the
        failures and timeouts of the last RECENT_SECONDS."""
        now = time.time() if now is None else now
        while self._recent and now - self._recent[0][0] > RECENT_SECONDS:
            self._recent.popleft()
        timeouts = sum(1 for _, timeout in self._recent if timeout)
        return {
            "status": upstream_status(self.state, self.last_success, self.last_failure),
            "state": self.state,
            "consecutive_failures": self.failures,
            "last_success": self.last_success or None,
            "last_failure": self.last_failure or None,
            "last_failure_kind": self.last_failure_kind or None,
            "recent_failures": len(self._recent) - timeouts,
            "recent_timeouts": timeouts,
        }


def upstream_status(state: str, last_success: float | None, last_failure: float | None) -> str:
    """down while the circuit is not closed or the last call failed (timed out, refused); up once a call answered
    after the last failure; unknown before any call: a passive view, it costs the upstream nothing."""
    if state != "closed" or (last_failure or 0) > (last_success or 0):
        return "down"
    return "up" if last_success else "unknown"


class Breakers:
    """One breaker per upstream base URL, made on first use."""

    def __init__(self, failures_to_open: int, open_seconds: float) -> None:
        self.failures_to_open = failures_to_open
        self.open_seconds = open_seconds
        self._by_name: dict[str, CircuitBreaker] = {}

    def get(self, name: str) -> CircuitBreaker:
        breaker = self._by_name.get(name)
        if breaker is None:
            breaker = self._by_name[name] = CircuitBreaker(name, self.failures_to_open, self.open_seconds)
        return breaker

    def report(self) -> dict[str, dict[str, Any]]:
        """Every upstream called so far, by base URL (CircuitBreaker.report)."""
        return {name: breaker.report() for name, breaker in list(self._by_name.items())}
