"""POST /v1/certificates (protocol §9): a CSR signed by the mesh CA for the identity the caller's key stands for, and
the revocation of every certificate issued under a key when that key is revoked.

The registry token's key decides the identity: a gateway's key may hold urn:lienthong:gateway:<its code> only, a
subsystem's client key urn:lienthong:subsystem:<that subsystem> only; admins hold no mesh identity. Each issued
certificate is stored (kind `certificates`: serial, identity, kid, not_after) with the kid it was issued under, so
revoking that key revokes it too (registry.store.Tx.revoke_certificates).
"""

from __future__ import annotations

from typing import Any

from starlette.responses import Response

from lienthong import pki
from lienthong.problem import Problem, bad_request
from registry import handlers
from registry.auth import Principal, _live_key
from registry.runtime import current
from registry.store import Tx

TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"  # as the snapshot builder compares not_after with its clock


def owned_identity(who: Principal) -> str | None:
    """The one mesh identity the caller's key may hold a certificate for."""
    if who.role == "gateway" and who.gateway:
        return pki.identity("gateway", who.gateway)
    if who.role == "integrator":
        return pki.identity("subsystem", who.iss)
    return None


async def _key_still_live(tx: Tx, who: Principal) -> bool:
    """Re-read under the change's WATCH: a key revoked since its token was checked issues nothing."""
    if who.role == "gateway" and who.gateway:
        holder = await tx.get("gateways", who.gateway)
    else:
        holder = await tx.get("clients", who.iss)
    return holder is not None and _live_key(holder["keys"], who.kid) is not None


async def request_certificate(body: dict[str, Any]) -> Response:
    who = await handlers._principal()
    rt = current()
    try:
        csr, uri = pki.check_csr(body.get("csr", ""))
    except pki.CertificateError as exc:
        raise bad_request("csr", f"the certificate request is refused: {exc}", "invalid-body") from exc
    owned = owned_identity(who)
    if owned is None:
        raise Problem(403, "access-denied", "an admin key holds no mesh identity: sign the request with the "
                      "gateway's key or the subsystem's client key", field="csr")  # fmt: skip
    if uri != owned:
        raise Problem(403, "access-denied", f"the request names {uri}, but this key ({who.kid}) may hold a "
                      f"certificate for {owned} only", field="csr")  # fmt: skip
    cert = rt.issuer.issue(csr, uri)
    serial = format(cert.serial_number, "x")
    record = {
        "serial": serial, "identity": uri, "kid": who.kid, "revoked": False,
        "not_after": cert.not_valid_after_utc.strftime(TIME_FORMAT),
    }  # fmt: skip

    async def change(tx: Tx) -> dict[str, Any]:
        if not await _key_still_live(tx, who):
            raise Problem(401, "invalid-token", "unknown or revoked key id",
                          headers={"WWW-Authenticate": 'Bearer realm="registry"'})  # fmt: skip
        return tx.put("certificates", serial, None, record, "certificates.issue")

    await rt.store.change(who.who, change)
    answer = {"certificate": pki.cert_pem(cert).decode(), "ca": rt.issuer.ca_pem, "serial": serial,
              "not_after": cert.not_valid_after_utc.isoformat().replace("+00:00", "Z")}  # fmt: skip
    return handlers._json(answer, 201)
