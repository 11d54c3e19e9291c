"""Input parsing that the OpenAPI schema cannot do alone (connexion does not check `format: date`), always as a
400 problem naming the field, and domain rule errors turned into the same."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import TypeVar

from connectors.rules.errors import RuleError
from lienthong.problem import bad_request

T = TypeVar("T")


def parse_date(value: object, field: str) -> dt.date:
    if not isinstance(value, str) or len(value) != 10:
        raise bad_request(field, f"{field} is a date YYYY-MM-DD")
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise bad_request(field, f"{field} is not a valid calendar date (YYYY-MM-DD)") from None


def checked(rule: Callable[..., T], value: object, field: str) -> T:
    """Run a domain rule validator (connectors.rules) and turn its RuleError into the 400 problem naming the field."""
    try:
        return rule(value, field)
    except RuleError as exc:
        raise exc.to_problem() from None


def parse_cursor(value: object, field: str = "since") -> int:
    if value is None or value == "":
        return 0
    if not isinstance(value, str) or not value.isascii() or not value.isdigit() or len(value) > 18:
        raise bad_request(field, f"{field} is a cursor: digits, as returned in next_cursor (0 for the beginning)")
    return int(value)
