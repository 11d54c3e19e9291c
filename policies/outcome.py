"""The outcome class of a call (docs/operations.md), the one classification that meter, transaction log, metrics,
dashboard and alerts all count by, so that no two of them can disagree about what an error is.

Circular 13/2017 asks an exchange to tell three answers apart, none of them an error: data found, no data, and data
that exists but this requester may not see. The rest is someone's failure, and whose matters to an operator:
the client's (bad input, a refused token, over quota), the provider's (its connector failed, timed out or could not
be reached) or the platform's (the mesh itself).

A provider's own answer (the mesh passed it on: no `error_code`) is classed by its status, with the statuses its
connector declares as "no data" (`x-lienthong-no-data` in its OpenAPI document, carried by the snapshot's endpoint);
the mesh's own refusals and failures are classed by their error code (docs/protocol.md §6).
"""

from __future__ import annotations

from typing import Final, Literal

Outcome = Literal["found", "no-data", "not-permitted", "client-error", "provider-failure", "platform-failure"]
OUTCOMES: Final[tuple[Outcome, ...]] = (
    "found", "no-data", "not-permitted", "client-error", "provider-failure", "platform-failure",
)  # fmt: skip
ANSWERS: Final = frozenset({"found", "no-data", "not-permitted"})  # Circular 13's three answers: not errors
FAILURES: Final = frozenset({"client-error", "provider-failure", "platform-failure"})

# the mesh's codes for a provider that failed: its connector timed out, failed, or its breaker is open after failing
PROVIDER_CODES: Final = frozenset({"upstream-timeout", "upstream-failed", "upstream-refused", "circuit-open"})
# the mesh's refusals that mean "this requester may not": no grant, purpose or endpoint; a revoked certificate
NOT_PERMITTED_CODES: Final = frozenset({"access-denied", "not-permitted", "certificate-revoked"})


def classify(status: int, error_code: str | None, no_data: frozenset[int] = frozenset()) -> Outcome:
    """The outcome class of one call: `status` as answered (0 when no answer was sent), `error_code` when the mesh
    answered rather than the provider, `no_data` the statuses the endpoint's connector declares as no data."""
    if error_code is None:
        if 0 < status < 400:
            return "found"
        if status in no_data:
            return "no-data"
        if status == 403:
            return "not-permitted"
        return "client-error" if 400 <= status < 500 else "provider-failure"
    if error_code in PROVIDER_CODES:
        return "provider-failure"
    if error_code in NOT_PERMITTED_CODES and status < 500:
        return "not-permitted"
    return "client-error" if 400 <= status < 500 else "platform-failure"


def error_type(status: int, error_code: str | None) -> str | None:
    """What went wrong, for a record or a filter: the mesh's code, `http-<status>` for a provider's error answer,
    None for a success."""
    if error_code is not None:
        return error_code
    return f"http-{status}" if status >= 400 or status == 0 else None
