"""The registry API's operations (openapi/registry.yaml): each checks the caller's role, validates identifiers with
lienthong.ids, and changes the store in one atomic step."""

from __future__ import annotations

import secrets
from typing import Any

import orjson
from connexion import request
from connexion.context import context
from starlette.responses import Response

from lienthong import ids
from lienthong.keys import public_key_from_jwk, thumbprint
from lienthong.problem import Problem, bad_request
from lienthong.upstream_policy import PolicyError, url_endpoint
from registry import openapi_endpoints, path_templates, service_rules
from registry.auth import Principal, authenticate
from registry.runtime import current
from registry.store import Kind, Tx, now_iso

RESERVED_SERVICE_CODES = frozenset({"listMethods", "allowedMethods", "getOpenAPI", "listClients"})
MAX_WAIT = 60


# ---- plumbing ---------------------------------------------------------------------------------------------------


async def _principal() -> Principal:
    """The caller, verified by registry.auth.bearer_info before the operation ran."""
    info = context.get("token_info") or {}
    principal = info.get("principal")
    if isinstance(principal, Principal):
        return principal
    return await authenticate(current().store, request.headers.get("authorization"))


def _json(body: Any, status: int = 200, version: int | None = None) -> Response:
    headers = {"ETag": f'"{version}"'} if version is not None else None
    return Response(orjson.dumps(body), status_code=status, media_type="application/json", headers=headers)


def _obj(obj: dict[str, Any], status: int = 200) -> Response:
    return _json(obj, status, int(obj.get("version", 0)))


def _parse_etag(value: str) -> str:
    value = value.strip()
    if value.startswith("W/"):
        value = value[2:]
    return value.strip('"')


def _check_if_match(obj: dict[str, Any] | None) -> None:
    """A stale If-Match is 412; without one the change applies (last writer wins, as the client chose)."""
    header = request.headers.get("if-match")
    if header is None or obj is None:
        return
    wanted = {_parse_etag(v) for v in header.split(",")}
    if "*" in wanted:
        return
    if str(obj.get("version", 0)) not in wanted:
        raise Problem(
            412,
            "precondition-failed",
            f"the object is at version {obj.get('version', 0)}, not {header}; read it again",
            field="If-Match",
        )


def _valid(kind: ids.Kind, value: object, field: str) -> str:
    try:
        return ids.validate(kind, value, field)
    except ids.InvalidIdentifier as exc:
        raise Problem(400, "invalid-identifier", f"{exc.reason} (got {exc.value!r})", field=exc.field) from exc


def _not_found(what: str, ident: str) -> Problem:
    return Problem(404, "not-found", f"no {what} {ident!r}")


def _conflict(what: str, ident: str) -> Problem:
    return Problem(409, "conflict", f"{what} {ident!r} already exists")


async def _must(tx: Tx, kind: Kind, ident: str, what: str) -> dict[str, Any]:
    obj = await tx.get(kind, ident)
    if obj is None:
        raise _not_found(what, ident)
    return obj


async def _must_ref(tx: Tx, kind: Kind, ident: str, field: str, what: str) -> dict[str, Any]:
    """A reference in a body to something unknown is the body's fault: 400 naming the field."""
    obj = await tx.get(kind, ident)
    if obj is None:
        raise bad_request(field, f"no {what} {ident!r} is registered")
    return obj


def _member_path(member_class: str, member_code: str) -> str:
    return _valid("member", f"VN/{member_class}/{member_code}", "member")


def _subsystem_path(member_class: str, member_code: str, subsystem_code: str) -> str:
    return _valid("subsystem", f"VN/{member_class}/{member_code}/{subsystem_code}", "subsystem")


def _service_path(member_class: str, member_code: str, subsystem_code: str, service_code: str) -> str:
    return _valid("service", f"VN/{member_class}/{member_code}/{subsystem_code}/{service_code}", "service")


def _member_of(subsystem_or_service: str) -> str:
    return "/".join(subsystem_or_service.split("/")[:3])


def _checked_url(url: str, field: str) -> None:
    """Every URL the registry stores is read by the one parser the gateways and the upstream policy use."""
    try:
        url_endpoint(url)
    except PolicyError as exc:
        raise bad_request(field, str(exc), "invalid-parameter") from None


def _checked_jwk(jwk: dict[str, Any], field: str) -> dict[str, Any]:
    """A public JWK ready to store: parsed once to prove it is a usable key, kid defaulting to its thumbprint."""
    try:
        public_key_from_jwk(jwk)
    except ValueError as exc:
        raise bad_request(field, str(exc), "invalid-body") from exc
    public: dict[str, Any] = {k: jwk[k] for k in ("kty", "crv", "x", "y") if k in jwk}
    public["kid"] = jwk.get("kid") or thumbprint(public)
    public["revoked"] = False
    public["added_at"] = now_iso()
    return public


async def _claim_kid(tx: Tx, kid: str, role: str, owner: str, field: str) -> None:
    if await tx.kid_owner(kid) is not None:
        raise Problem(409, "conflict", f"key id {kid!r} is already registered", field=field)
    tx.index_kid(kid, role, owner)


def _revoke_in(keys: list[dict[str, Any]], kid: str, what: str) -> list[dict[str, Any]]:
    out, found = [], False
    for k in keys:
        if k.get("kid") == kid:
            found = True
            if not k.get("revoked"):
                k = {**k, "revoked": True, "revoked_at": now_iso()}
        out.append(k)
    if not found:
        raise _not_found(f"key of {what}", kid)
    return out


# ---- members ----------------------------------------------------------------------------------------------------


async def list_members() -> Response:
    await _principal()
    items = sorted(await current().store.all("members"), key=lambda m: m["id"])
    return _json({"items": items})


async def create_member(body: dict[str, Any]) -> Response:
    who = await _principal()
    who.require_admin()
    member_id = _valid("member", body.get("id"), "id")
    gateway = _valid("gateway", body.get("home_gateway"), "home_gateway")

    async def change(tx: Tx) -> dict[str, Any]:
        if await tx.get("members", member_id) is not None:
            raise _conflict("member", member_id)
        await _must_ref(tx, "gateways", gateway, "home_gateway", "gateway")
        obj = {"id": member_id, "name": body["name"], "home_gateway": gateway}
        return tx.put("members", member_id, None, obj, "members.create")

    return _obj(await current().store.change(who.who, change), 201)


async def get_member(member_class: str, member_code: str) -> Response:
    await _principal()
    member_id = _member_path(member_class, member_code)
    obj = await current().store.get("members", member_id)
    if obj is None:
        raise _not_found("member", member_id)
    return _obj(obj)


async def update_member(member_class: str, member_code: str, body: dict[str, Any]) -> Response:
    who = await _principal()
    who.require_admin()
    member_id = _member_path(member_class, member_code)
    if "home_gateway" in body:
        _valid("gateway", body["home_gateway"], "home_gateway")

    async def change(tx: Tx) -> dict[str, Any]:
        before = await _must(tx, "members", member_id, "member")
        _check_if_match(before)
        if "home_gateway" in body:
            await _must_ref(tx, "gateways", body["home_gateway"], "home_gateway", "gateway")
        changed: dict[str, Any] = {k: body[k] for k in ("name", "home_gateway") if k in body}
        after = {**before, **changed}
        return tx.put("members", member_id, before, after, "members.update")

    return _obj(await current().store.change(who.who, change))


# ---- subsystems -------------------------------------------------------------------------------------------------


async def list_subsystems(member: str | None = None) -> Response:
    await _principal()
    if member is not None:
        _valid("member", member, "member")
    items = [s for s in await current().store.all("subsystems") if member is None or s["member"] == member]
    return _json({"items": sorted(items, key=lambda s: s["id"])})


async def create_subsystem(body: dict[str, Any]) -> Response:
    who = await _principal()
    subsystem_id = _valid("subsystem", body.get("id"), "id")
    member_id = _member_of(subsystem_id)
    who.require_member(member_id)

    async def change(tx: Tx) -> dict[str, Any]:
        if await tx.get("subsystems", subsystem_id) is not None:
            raise _conflict("subsystem", subsystem_id)
        await _must_ref(tx, "members", member_id, "id", "member")
        obj = {"id": subsystem_id, "member": member_id, "name": body["name"]}
        return tx.put("subsystems", subsystem_id, None, obj, "subsystems.create")

    return _obj(await current().store.change(who.who, change), 201)


async def get_subsystem(member_class: str, member_code: str, subsystem_code: str) -> Response:
    await _principal()
    subsystem_id = _subsystem_path(member_class, member_code, subsystem_code)
    obj = await current().store.get("subsystems", subsystem_id)
    if obj is None:
        raise _not_found("subsystem", subsystem_id)
    return _obj(obj)


# ---- gateways ---------------------------------------------------------------------------------------------------


async def list_gateways() -> Response:
    await _principal()
    items = sorted(await current().store.all("gateways"), key=lambda g: g["code"])
    return _json({"items": items})


async def create_gateway(body: dict[str, Any]) -> Response:
    who = await _principal()
    who.require_admin()
    code = _valid("gateway", body.get("code"), "code")
    _checked_url(body["base_url"], "base_url")
    keys = [_checked_jwk(k, f"keys.{i}") for i, k in enumerate(body.get("keys") or [])]
    if len({k["kid"] for k in keys}) != len(keys):
        raise bad_request("keys", "two keys have the same kid", "invalid-body")

    async def change(tx: Tx) -> dict[str, Any]:
        if await tx.get("gateways", code) is not None:
            raise _conflict("gateway", code)
        for i, k in enumerate(keys):
            await _claim_kid(tx, k["kid"], "gateway", code, f"keys.{i}.kid")
        obj = {"code": code, "base_url": body["base_url"], "keys": keys}
        return tx.put("gateways", code, None, obj, "gateways.create")

    return _obj(await current().store.change(who.who, change), 201)


async def get_gateway(code: str) -> Response:
    await _principal()
    _valid("gateway", code, "code")
    obj = await current().store.get("gateways", code)
    if obj is None:
        raise _not_found("gateway", code)
    return _obj(obj)


async def update_gateway(code: str, body: dict[str, Any]) -> Response:
    who = await _principal()
    who.require_admin()
    _valid("gateway", code, "code")
    _checked_url(body["base_url"], "base_url")

    async def change(tx: Tx) -> dict[str, Any]:
        before = await _must(tx, "gateways", code, "gateway")
        _check_if_match(before)
        return tx.put("gateways", code, before, {**before, "base_url": body["base_url"]}, "gateways.update")

    return _obj(await current().store.change(who.who, change))


async def add_gateway_key(code: str, body: dict[str, Any]) -> Response:
    who = await _principal()
    who.require_admin()
    _valid("gateway", code, "code")
    jwk = _checked_jwk(body, "body")

    async def change(tx: Tx) -> dict[str, Any]:
        before = await _must(tx, "gateways", code, "gateway")
        _check_if_match(before)
        await _claim_kid(tx, jwk["kid"], "gateway", code, "kid")
        return tx.put("gateways", code, before, {**before, "keys": [*before["keys"], jwk]}, "gateways.add-key")

    return _obj(await current().store.change(who.who, change), 201)


async def revoke_gateway_key(code: str, kid: str) -> Response:
    who = await _principal()
    who.require_admin()
    _valid("gateway", code, "code")

    async def change(tx: Tx) -> dict[str, Any]:
        before = await _must(tx, "gateways", code, "gateway")
        _check_if_match(before)
        keys = _revoke_in(before["keys"], kid, f"gateway {code}")
        await tx.revoke_certificates(kid)
        return tx.put("gateways", code, before, {**before, "keys": keys}, "gateways.revoke-key")

    return _obj(await current().store.change(who.who, change))


# ---- services ---------------------------------------------------------------------------------------------------


def _visible_or_404(
    who: Principal, service: dict[str, Any] | None, ident: str, code: str = "not-found"
) -> dict[str, Any]:
    """A service as `who` may see it; one it may not see (never approved, not its own) does not exist for it."""
    shown = service_rules.visible(who, service) if service is not None else None
    if shown is None:
        raise Problem(404, code, f"no service {ident!r}")
    return shown


async def _checked_registration(body: dict[str, Any]) -> None:
    """Limits, path templates and the upstream policy, before any endpoint is derived or anything stored."""
    rt = current()
    service_rules.check_document_limits(rt.settings, body.get("openapi"))
    if isinstance(body.get("openapi"), dict):
        path_templates.check(body["openapi"])
    gateways = await rt.store.all("gateways")
    await service_rules.check_upstream(service_rules.policy(rt.settings, rt.redis_url, gateways), body["upstream_url"])


def _service_fields(body: dict[str, Any], previous: list[dict[str, Any]] | None) -> dict[str, Any]:
    _valid("version", body.get("version_label"), "version_label")
    _valid("gateway", body.get("gateway"), "gateway")
    return {
        "version_label": body["version_label"],
        "name": body["name"],
        "description": body.get("description", ""),
        "gateway": body["gateway"],
        "upstream_url": body["upstream_url"],
        "timeout_ms": int(body.get("timeout_ms", 5000)),
        "openapi": body["openapi"],
        "endpoints": openapi_endpoints.derive(body["openapi"], previous),
    }


async def list_services(provider: str | None = None, gateway: str | None = None) -> Response:
    who = await _principal()
    if provider is not None:
        _valid("subsystem", provider, "provider")
    if gateway is not None:
        _valid("gateway", gateway, "gateway")
    shown = [service_rules.visible(who, s) for s in await current().store.all("services")]
    items = [
        s
        for s in shown
        if s is not None
        and (provider is None or s["provider"] == provider)
        and (gateway is None or s["gateway"] == gateway)
    ]
    return _json({"items": sorted(items, key=lambda s: s["id"])})


async def register_service(body: dict[str, Any]) -> Response:
    who = await _principal()
    subsystem_id = _valid("subsystem", body.get("subsystem"), "subsystem")
    code = _valid("part", body.get("code"), "code")
    if code in RESERVED_SERVICE_CODES:
        raise Problem(400, "invalid-identifier", f"{code!r} is a reserved metaservice name", field="code")
    service_id = _valid("service", f"{subsystem_id}/{code}", "code")
    who.require_member(_member_of(subsystem_id))
    await _checked_registration(body)
    fields = _service_fields(body, None)

    async def change(tx: Tx) -> dict[str, Any]:
        if await tx.get("services", service_id) is not None:
            raise _conflict("service", service_id)
        await _must_ref(tx, "subsystems", subsystem_id, "subsystem", "subsystem")
        service_rules.check_member_limit(current().settings, _member_of(subsystem_id), await tx.ids("services"))
        await _must_ref(tx, "gateways", fields["gateway"], "gateway", "gateway")
        obj = {"id": service_id, "provider": subsystem_id, "code": code, **fields, "approved": False}
        return tx.put("services", service_id, None, obj, "services.register")

    return _obj(await current().store.change(who.who, change), 201)


async def get_service(member_class: str, member_code: str, subsystem_code: str, service_code: str) -> Response:
    who = await _principal()
    service_id = _service_path(member_class, member_code, subsystem_code, service_code)
    return _obj(_visible_or_404(who, await current().store.get("services", service_id), service_id))


async def update_service(
    member_class: str, member_code: str, subsystem_code: str, service_code: str, body: dict[str, Any]
) -> Response:
    who = await _principal()
    service_id = _service_path(member_class, member_code, subsystem_code, service_code)
    who.require_member(_member_of(service_id))
    await _checked_registration(body)

    async def change(tx: Tx) -> dict[str, Any]:
        before = await _must(tx, "services", service_id, "service")
        _check_if_match(before)
        fields = _service_fields(body, before["endpoints"])
        await _must_ref(tx, "gateways", fields["gateway"], "gateway", "gateway")
        # a new version, upstream, gateway or endpoint set needs approval again; the approved one keeps serving
        return tx.put("services", service_id, before, service_rules.updated(before, fields), "services.update")

    return _obj(await current().store.change(who.who, change))


async def approve_service(member_class: str, member_code: str, subsystem_code: str, service_code: str) -> Response:
    who = await _principal()
    who.require_admin()
    service_id = _service_path(member_class, member_code, subsystem_code, service_code)

    async def change(tx: Tx) -> dict[str, Any]:
        before = await _must(tx, "services", service_id, "service")
        _check_if_match(before)
        after = {k: v for k, v in before.items() if k != "live"}  # the approved revision is now the live one
        return tx.put("services", service_id, before, {**after, "approved": True}, "services.approve")

    return _obj(await current().store.change(who.who, change))


async def set_endpoint(
    member_class: str, member_code: str, subsystem_code: str, service_code: str, body: dict[str, Any]
) -> Response:
    who = await _principal()
    service_id = _service_path(member_class, member_code, subsystem_code, service_code)
    who.require_member(_member_of(service_id))
    method, path, enabled = body["method"].upper(), body["path"], bool(body["enabled"])

    async def change(tx: Tx) -> dict[str, Any]:
        before = await _must(tx, "services", service_id, "service")
        _check_if_match(before)
        after, found = dict(before), False
        if "live" in before:
            after["live"] = dict(before["live"])  # copied: `before` goes to the change log as it was
        # the flag applies to the live revision too: disabling an endpoint must not wait for an approval
        for holder in (after, after.get("live")):
            if holder is None:
                continue
            endpoints = []
            for e in holder["endpoints"]:
                if e["method"] == method and e["path"] == path:
                    e, found = {**e, "enabled": enabled}, True
                endpoints.append(e)
            holder["endpoints"] = endpoints
        if not found:
            raise Problem(404, "unknown-endpoint", f"{service_id} has no endpoint {method} {path}", field="path")
        action = "services.enable-endpoint" if enabled else "services.disable-endpoint"
        return tx.put("services", service_id, before, after, action)

    return _obj(await current().store.change(who.who, change))


# ---- client keys ------------------------------------------------------------------------------------------------


def _empty_client(subsystem_id: str) -> dict[str, Any]:
    return {"subsystem": subsystem_id, "keys": [], "version": 0}


async def list_client_keys(member_class: str, member_code: str, subsystem_code: str) -> Response:
    await _principal()
    subsystem_id = _subsystem_path(member_class, member_code, subsystem_code)
    store = current().store
    if await store.get("subsystems", subsystem_id) is None:
        raise _not_found("subsystem", subsystem_id)
    return _obj(await store.get("clients", subsystem_id) or _empty_client(subsystem_id))


async def add_client_key(member_class: str, member_code: str, subsystem_code: str, body: dict[str, Any]) -> Response:
    who = await _principal()
    subsystem_id = _subsystem_path(member_class, member_code, subsystem_code)
    who.require_member(_member_of(subsystem_id))
    jwk = _checked_jwk(body, "body")

    async def change(tx: Tx) -> dict[str, Any]:
        await _must(tx, "subsystems", subsystem_id, "subsystem")
        before = await tx.get("clients", subsystem_id)
        _check_if_match(before or _empty_client(subsystem_id))
        await _claim_kid(tx, jwk["kid"], "client", subsystem_id, "kid")
        keys = [*(before["keys"] if before else []), jwk]
        return tx.put("clients", subsystem_id, before, {"subsystem": subsystem_id, "keys": keys}, "clients.add-key")

    return _obj(await current().store.change(who.who, change), 201)


async def revoke_client_key(member_class: str, member_code: str, subsystem_code: str, kid: str) -> Response:
    who = await _principal()
    subsystem_id = _subsystem_path(member_class, member_code, subsystem_code)
    who.require_member(_member_of(subsystem_id))

    async def change(tx: Tx) -> dict[str, Any]:
        before = await _must(tx, "clients", subsystem_id, "client keys of")
        _check_if_match(before)
        keys = _revoke_in(before["keys"], kid, subsystem_id)
        await tx.revoke_certificates(kid)
        return tx.put("clients", subsystem_id, before, {**before, "keys": keys}, "clients.revoke-key")

    return _obj(await current().store.change(who.who, change))


# ---- grants -----------------------------------------------------------------------------------------------------


async def list_grants(consumer: str | None = None, service: str | None = None) -> Response:
    who = await _principal()
    if consumer is not None:
        _valid("subsystem", consumer, "consumer")
    if service is not None:
        _valid("service", service, "service")
    items = [
        g
        for g in await current().store.all("grants")
        if (consumer is None or g["consumer"] == consumer)
        and (service is None or g["service"] == service)
        and service_rules.grant_visible(who, g)
    ]
    return _json({"items": sorted(items, key=lambda g: g["id"])})


def _grant_key(g: dict[str, Any]) -> tuple[str, str, Any, frozenset[str]]:
    eps = g["endpoints"]
    ep_key = "*" if eps == "*" else frozenset((e["method"], e["path"]) for e in eps)
    return g["consumer"], g["service"], ep_key, frozenset(g["purposes"])


async def create_grant(body: dict[str, Any]) -> Response:
    who = await _principal()
    who.require_admin()
    consumer = _valid("subsystem", body.get("consumer"), "consumer")
    service_id = _valid("service", body.get("service"), "service")
    endpoints = body.get("endpoints", "*")
    if endpoints != "*":
        endpoints = [{"method": e["method"].upper(), "path": e["path"]} for e in endpoints]
    purposes = sorted(set(body["purposes"]))
    default_purpose = body.get("default_purpose")
    if default_purpose is not None and default_purpose not in purposes:
        # a gateway would quarantine such a grant (lienthong/snapshot.py): refuse it here instead
        raise bad_request("default_purpose", f"default_purpose {default_purpose!r} is not one of the grant's purposes")
    grant = {
        "consumer": consumer,
        "service": service_id,
        "endpoints": endpoints,
        "purposes": purposes,
        "default_purpose": default_purpose,
        "fields": body.get("fields"),
        "quota": body.get("quota"),
        # the data tracker (issue 19): how long its accesses stay undisclosed, and whether the official is named
        "disclosure_delay_days": body.get("disclosure_delay_days", 0),
        "disclose_user": body.get("disclose_user", False),
        "revoked": False,
    }

    async def change(tx: Tx) -> dict[str, Any]:
        await _must_ref(tx, "subsystems", consumer, "consumer", "subsystem")
        service = await _must_ref(tx, "services", service_id, "service", "service")
        # endpoints, purposes and fields against the service's document, each refusal naming the request's entry
        service_rules.check_grant(service, endpoints, body.get("fields"), list(body["purposes"]))
        key = _grant_key(grant)
        for other in await tx.all("grants"):
            if not other["revoked"] and _grant_key(other) == key:
                raise Problem(409, "conflict", f"grant {other['id']} already gives exactly this access")
        grant_id = "g-" + secrets.token_hex(8)
        return tx.put("grants", grant_id, None, {"id": grant_id, **grant}, "grants.create")

    return _obj(await current().store.change(who.who, change), 201)


async def get_grant(grant_id: str) -> Response:
    who = await _principal()
    obj = await current().store.get("grants", grant_id)
    if obj is None or not service_rules.grant_visible(who, obj):
        raise _not_found("grant", grant_id)
    return _obj(obj)


async def revoke_grant(grant_id: str) -> Response:
    who = await _principal()
    who.require_admin()

    async def change(tx: Tx) -> dict[str, Any]:
        before = await _must(tx, "grants", grant_id, "grant")
        _check_if_match(before)
        if before["revoked"]:
            return before
        return tx.put("grants", grant_id, before, {**before, "revoked": True}, "grants.revoke")

    return _obj(await current().store.change(who.who, change))


# ---- catalog ----------------------------------------------------------------------------------------------------


def _catalog_entry(s: dict[str, Any]) -> dict[str, Any]:
    keys = ("id", "name", "description", "provider", "version_label", "approved", "endpoints")
    return {k: s[k] for k in keys if k in s}


def _matches(s: dict[str, Any], words: list[str]) -> bool:
    info = s["openapi"].get("info") if isinstance(s.get("openapi"), dict) else None
    texts = [s["id"], s["name"], s.get("description", "")]
    if isinstance(info, dict):
        texts += [str(info.get("title", "")), str(info.get("description", ""))]
    texts += [e.get("summary") or "" for e in s["endpoints"]]
    haystack = " ".join(texts).lower()
    return all(w in haystack for w in words)


async def search_catalog(q: str | None = None) -> Response:
    who = await _principal()
    words = (q or "").lower().split()
    # a service never approved is visible to admins and its own member only; others see the approved revision
    shown = [service_rules.visible(who, s) for s in await current().store.all("services")]
    items = [_catalog_entry(s) for s in shown if s is not None and _matches(s, words)]
    return _json({"items": sorted(items, key=lambda s: s["id"])})


async def _service_for(member_class: str, member_code: str, subsystem_code: str, service_code: str) -> dict[str, Any]:
    who = await _principal()
    service_id = _service_path(member_class, member_code, subsystem_code, service_code)
    obj = await current().store.get("services", service_id)
    return _visible_or_404(who, obj, service_id, "unknown-service")


async def get_openapi(member_class: str, member_code: str, subsystem_code: str, service_code: str) -> Response:
    service = await _service_for(member_class, member_code, subsystem_code, service_code)
    return _json(service["openapi"], version=service["version"])


async def list_methods(member_class: str, member_code: str, subsystem_code: str, service_code: str) -> Response:
    service = await _service_for(member_class, member_code, subsystem_code, service_code)
    return _json({"service": service["id"], "endpoints": service["endpoints"]}, version=service["version"])


# ---- change log and snapshot ------------------------------------------------------------------------------------


async def list_changes(since: int = 0, limit: int = 100) -> Response:
    who = await _principal()
    who.require_admin()
    return _json({"items": await current().store.changes(since, limit)})


def _held_version() -> int | None:
    header = request.headers.get("if-none-match")
    if header is None:
        return None
    try:
        return int(_parse_etag(header))
    except ValueError:
        return None


async def _version_past(held: int) -> int:
    """The current version: the watch's when it is past `held` (no Redis call for each long poll it wakes at once),
    else Redis's (the watch may lag a change by one pub/sub message)."""
    rt = current()
    return rt.watch.version if rt.watch.version > held else await rt.store.version()


async def get_snapshot(gateway: str | None = None, wait: int = 0, full: bool = False) -> Response:
    """A gateway's snapshot (protocol §7.1): after If-None-Match N, a delta from N when the log reaches back to N
    (§7.2), else a full one; `full=true` asks for a full one whatever the gateway holds."""
    who = await _principal()
    rt = current()
    if who.role == "gateway":
        if gateway is not None and gateway != who.gateway:
            raise Problem(403, "access-denied", "a gateway may read only its own snapshot", field="gateway")
        code = str(who.gateway)
    elif who.role == "admin":
        if gateway is None:
            raise bad_request("gateway", "an admin must name the gateway whose snapshot to read")
        code = _valid("gateway", gateway, "gateway")
        if await rt.store.get("gateways", code) is None:
            raise _not_found("gateway", code)
    else:
        raise Problem(403, "access-denied", "only gateways and admins read the snapshot")
    held = _held_version()
    built = None
    if held is not None:
        version = await _version_past(held)
        if version <= held and wait > 0:
            await rt.watch.wait_past(held, min(wait, MAX_WAIT))
            version = await _version_past(held)
        if version <= held:
            return Response(status_code=304, headers={"ETag": f'"{version}"'})
        if not full and held > 0:
            built = await rt.builder.delta(code, held, version)
    if built is None:
        built = await rt.builder.full(code)
    headers = {"ETag": f'"{built.version}"', "Cache-Control": "no-cache", "X-Snapshot-Kind": built.kind}
    return Response(built.body, media_type="application/json", headers=headers)
