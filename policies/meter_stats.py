"""What the meter's answers compute from counts: the split of calls by outcome class (policies.outcome) with rates
over the total, and latency percentiles estimated from histogram buckets.

The split keeps Circular 13's three answers (found, no data, not permitted) apart from the failures, and the
failures apart by whose they are: the client's, the provider's, the platform's. A service that answered "no data"
twice shows 0 % of every failure.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any, Final

from policies.outcome import ANSWERS, OUTCOMES

# the counts' old outcome labels (before issue 18), read as the nearest class so that older hours still add up;
# they cannot tell no data from a client error, nor a provider's timeout from the platform's failure
LEGACY_OUTCOMES: Final = {"2xx": "found", "4xx": "client-error", "5xx": "provider-failure", "refused": "client-error",
                          "platform-error": "platform-failure"}  # fmt: skip
# the answer's names for the failure classes, and for the three answers together
SPLIT: Final = (("answers", "answer"), ("client_errors", "client_error"), ("provider_failures", "provider_failure"),
                ("platform_failures", "platform_failure"))  # fmt: skip
FAILURE_FIELDS: Final = {"client-error": "client_errors", "provider-failure": "provider_failures",
                         "platform-failure": "platform_failures"}  # fmt: skip


def outcome_class(label: str) -> str:
    """The outcome class a count's label names (an old label mapped, an unknown one kept as it is)."""
    return LEGACY_OUTCOMES.get(label, label)


def outcome_split(outcomes: Mapping[str, int]) -> dict[str, Any]:
    """Counts per outcome class (all six, zeros too), the three answers together and each failure class, each with
    its rate (0..1, four decimals) over the total."""
    n = sum(outcomes.values())
    counts = {"answers": sum(outcomes.get(o, 0) for o in ANSWERS)}
    counts |= {name: outcomes.get(o, 0) for o, name in FAILURE_FIELDS.items()}
    # every class, then any label this version does not know, so that the outcomes add up to the total
    out: dict[str, Any] = {"outcomes": {o: outcomes.get(o, 0) for o in OUTCOMES} | dict(outcomes)}
    for field, rate in SPLIT:
        out[field] = counts[field]
        out[f"{rate}_rate"] = round(counts[field] / n, 4) if n else 0.0
    return out


def percentile(counts: Counter[str], bounds: Sequence[float], q: float) -> float | None:
    """The q-quantile (0..1) of a latency histogram, interpolated linearly inside the bucket that holds it, as
    Prometheus' histogram_quantile does: an estimate, never finer than the buckets. `counts` maps each bucket's
    upper bound (`str(bound)`, "inf" last) to its calls; None when the quantile lies above the last finite bound."""
    n = sum(counts.values())
    if n == 0:
        return None
    rank, seen, lower = q * n, 0, 0.0
    for bound in bounds:
        in_bucket = counts.get(str(bound), 0)
        if in_bucket and seen + in_bucket >= rank:
            return round(lower + (bound - lower) * max(0.0, rank - seen) / in_bucket, 3)
        seen += in_bucket
        lower = float(bound)
    return None
