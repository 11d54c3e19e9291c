"""Tokens for the operations API in tests: an operator's (signed with the gateway's key, as `lienthong ops login`
does) and a member's (signed with one of its client keys), as Authorization headers."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway.ops_auth import HostNames, OpsGate, mint_member_token, mint_operator_token
from lienthong import keys
from lienthong.snapshot import Snapshot


def operator_headers(key: Any, kid: str, gateway: str, lifetime: int = 300) -> dict[str, str]:
    return {"Authorization": f"Bearer {mint_operator_token(key, kid, gateway, lifetime=lifetime)}"}


def member_headers(key: Any, kid: str, subsystem: str, gateway: str, lifetime: int = 60) -> dict[str, str]:
    return {"Authorization": f"Bearer {mint_member_token(key, kid, subsystem, gateway, lifetime=lifetime)}"}


def gateway_operator_headers(gw: Any) -> dict[str, str]:
    """For a tests.mesh_support.GatewayProc: an operator token signed with that gateway's own key."""
    return operator_headers(gw.key.key, gw.key.kid, gw.code)


OPERATOR_KEY = "operator.key"


def write_operator_key(data_dir: Path) -> dict[str, str]:
    """Make an operator key in data_dir for `standalone_gate` to trust; returns headers with a token signed by it."""
    key = keys.generate()
    keys.save_private(key, data_dir / OPERATOR_KEY)
    return operator_headers(key, keys.public_jwk(key)["kid"], "nghean", lifetime=3600)


def standalone_gate(data_dir: Path, gateway: str, snapshot_getter: Callable[[], Snapshot | None]) -> OpsGate:
    """The gate of an ops app served alone by uvicorn (tests.procs.ops_api): the operator key of
    write_operator_key, and 127.0.0.1 on any port (uvicorn picks it)."""
    public = keys.load_private(data_dir / OPERATOR_KEY).public_key()
    names = HostNames(frozenset({("127.0.0.1", None)}))
    return OpsGate(gateway, {keys.public_jwk(public)["kid"]: public}, names, snapshot_getter)


def schemathesis_headers(case: Any, token_headers: dict[str, str]) -> dict[str, str]:
    """The real token in place of the one schemathesis generated; none where it left Authorization out on purpose
    (a negative case of the spec's bearer security, which must get 401)."""
    generated = {k.lower() for k in (case.headers or {})}
    return dict(token_headers) if "authorization" in generated else {}
