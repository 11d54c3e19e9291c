"""Who is calling the registry (protocol §4.3): the token's kid picks the principal and its role."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from lienthong import ids
from lienthong.keys import PublicKey, public_key_from_jwk
from lienthong.problem import Problem
from lienthong.tokens import TokenError, unverified_kid, verify
from registry.store import Store

Role = Literal["admin", "integrator", "gateway"]
AUDIENCE = "registry"


@dataclass(frozen=True, slots=True)
class Principal:
    role: Role
    iss: str
    kid: str
    member: str | None = None  # integrators: the member they act for
    gateway: str | None = None  # gateways: their code

    @property
    def who(self) -> str:
        return f"{self.role}:{self.iss}#{self.kid}"

    def require_admin(self) -> None:
        if self.role != "admin":
            raise Problem(403, "access-denied", "only a registry admin may do this")

    def require_member(self, member: str) -> None:
        """Admins act for every member, integrators only for their own."""
        if self.role == "admin":
            return
        if self.role == "integrator" and self.member == member:
            return
        raise Problem(403, "access-denied", f"this key may not act for member {member}")


def _unauthorized(detail: str) -> Problem:
    return Problem(401, "invalid-token", detail, headers={"WWW-Authenticate": 'Bearer realm="registry"'})


def _live_key(keys: list[dict[str, Any]], kid: str) -> dict[str, Any] | None:
    for jwk in keys:
        if jwk.get("kid") == kid and not jwk.get("revoked"):
            return jwk
    return None


async def authenticate(store: Store, authorization: str | None) -> Principal:
    """Verify the bearer token against the key its kid names; raise 401 for anything wrong."""
    if not authorization or not authorization.startswith("Bearer "):
        raise _unauthorized("a bearer token is required (Authorization: Bearer <jwt>)")
    token = authorization[len("Bearer ") :].strip()
    try:
        kid = unverified_kid(token)
    except TokenError as exc:
        raise _unauthorized(exc.reason) from exc
    owner = await store.kid_owner(kid)
    jwk: dict[str, Any] | None = None
    role: Role
    expected_iss: str
    member = gateway = None
    if owner is None:
        raise _unauthorized("unknown or revoked key id")
    if owner["role"] == "admin":
        role, expected_iss = "admin", "admin"
        admin = await store.get("admins", kid)
        jwk = admin["jwk"] if admin and not admin.get("revoked") else None
    elif owner["role"] == "client":
        role, expected_iss = "integrator", owner["owner"]
        client = await store.get("clients", owner["owner"])
        jwk = _live_key(client["keys"], kid) if client else None
        member = ids.parse("subsystem", owner["owner"]).member
    else:
        role, expected_iss = "gateway", "gateway:" + owner["owner"]
        gw = await store.get("gateways", owner["owner"])
        jwk = _live_key(gw["keys"], kid) if gw else None
        gateway = owner["owner"]
    if jwk is None:
        raise _unauthorized("unknown or revoked key id")
    public: PublicKey = public_key_from_jwk(jwk)
    try:
        claims = verify(token, lambda _kid: public, audience=AUDIENCE)
    except TokenError as exc:
        raise _unauthorized(exc.reason) from exc
    if claims.get("iss") != expected_iss:
        raise _unauthorized(f"this key may only be used with iss {expected_iss!r}")
    return Principal(role=role, iss=expected_iss, kid=kid, member=member, gateway=gateway)


async def bearer_info(token: str) -> dict[str, Any]:
    """connexion's x-bearerInfoFunc: verify the token once, before validation, and hand the principal on."""
    from registry.runtime import current  # imported late: the runtime imports the store, which this module also does

    principal = await authenticate(current().store, "Bearer " + token)
    return {"sub": principal.iss, "principal": principal}
