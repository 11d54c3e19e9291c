"""Database values as JSON: dates as YYYY-MM-DD, times as RFC 3339 with an offset (UTC when the driver lost it)."""

from __future__ import annotations

import datetime as dt
from typing import Any


def json_value(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        # SQLite hands back naive datetimes even for timezone-aware columns; every stored time is UTC
        return (value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)).isoformat()
    if isinstance(value, dt.date):
        return value.isoformat()
    return value
