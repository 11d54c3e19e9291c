"""The one error type of the domain rules, mapped to a 400 problem by the API layer."""

from __future__ import annotations

from lienthong.problem import Problem, bad_request


class RuleError(ValueError):
    """A value broke a domain rule; `field` names the input and `reason` says what is wrong (never the value)."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason

    def to_problem(self) -> Problem:
        return bad_request(self.field, str(self))
