"""Revocation reaching 35 gateways: long-poll clients of the registry's snapshot endpoint, timed from the revoke."""

from __future__ import annotations

import importlib.util
from typing import Any


def run(gateways: int = 35) -> dict[str, Any]:
    if importlib.util.find_spec("registry.client") is None:
        raise RuntimeError("registry/client.py (the registry's Python client) does not exist yet")
    raise RuntimeError(f"revocation to {gateways} gateways: not written yet")
