"""A circuit breaker per upstream: closed, open (answer 503 at once), half-open (let one probe through).

State is per worker process on purpose: it is a local protection against piling requests onto a dead upstream,
not a shared view, and keeping it local costs nothing on the hot path.
"""

from __future__ import annotations

import time
from typing import Literal

from lienthong.problem import Problem

State = Literal["closed", "open", "half-open"]


class CircuitBreaker:
    def __init__(self, name: str, failures_to_open: int, open_seconds: float) -> None:
        self.name = name
        self.failures_to_open = failures_to_open
        self.open_seconds = open_seconds
        self.failures = 0
        self.opened_at = 0.0
        self.state: State = "closed"
        self._probing = False

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

    def failure(self, now: float | None = None) -> None:
        self.failures += 1
        if self.state == "half-open" or self.failures >= self.failures_to_open:
            self.state = "open"
            self.opened_at = now if now is not None else time.monotonic()
            self._probing = False


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
