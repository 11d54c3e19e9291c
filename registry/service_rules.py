"""What the registry demands of a service registration beyond its schema (issue 13): limits on its size, a policy on
where its upstream may point, re-approval of changes that move or reshape an approved service, and who may see it.

Approval: a change to an approved service's upstream URL, hosting gateway, version label or endpoints (anything
derived from its OpenAPI paths but the enabled flags, summaries and operation ids) sends it back to approval; its
last approved revision is kept as `live` and is what the snapshot carries until an admin approves again. A change to
its name, description, timeout or the rest of its document keeps it approved.
"""

from __future__ import annotations

from typing import Any

import orjson

from lienthong.problem import Problem
from lienthong.upstream_policy import PolicyError, UpstreamPolicy, endpoints_of
from registry.auth import Principal
from registry.openapi_doc import METHODS
from registry.settings import RegistrySettings
from registry.store import live_revision

MATERIAL_FIELDS = ("gateway", "upstream_url", "version_label")
COSMETIC_ENDPOINT_FIELDS = frozenset({"enabled", "summary", "operation_id"})


def _limit(status: int, code: str, detail: str, field: str, limit: str, value: int) -> Problem:
    return Problem(status, code, detail, field=field, limit=limit, max=value)


def check_document_limits(settings: RegistrySettings, doc: Any) -> None:
    """413 for a document over the size limit, 422 for one with more operations than the endpoint limit."""
    try:
        size = len(orjson.dumps(doc))
    except TypeError as exc:  # an integer beyond 64 bits: the request parser takes it, the store could not write it
        raise Problem(400, "invalid-body", f"the OpenAPI document cannot be stored: {exc}", field="openapi") from None
    if size > settings.max_document_bytes:
        raise _limit(413, "document-too-large", f"the OpenAPI document is {size} bytes as JSON; the limit is "
                     f"{settings.max_document_bytes} (max_document_bytes)", "openapi", "max_document_bytes",
                     settings.max_document_bytes)  # fmt: skip
    paths = doc.get("paths") if isinstance(doc, dict) else None
    if not isinstance(paths, dict):
        return
    count = sum(1 for item in paths.values() if isinstance(item, dict) for m in METHODS if m in item)
    if count > settings.max_endpoints:
        raise _limit(422, "too-many-endpoints", f"the OpenAPI document has {count} operations; the limit is "
                     f"{settings.max_endpoints} per service (max_endpoints)", "openapi.paths", "max_endpoints",
                     settings.max_endpoints)  # fmt: skip


def check_member_limit(settings: RegistrySettings, member: str, service_ids: list[str]) -> None:
    count = sum(1 for s in service_ids if s.startswith(member + "/"))
    if count >= settings.max_services_per_member:
        raise _limit(422, "too-many-services", f"member {member} already has {count} services; the limit is "
                     f"{settings.max_services_per_member} (max_services_per_member)", "code",
                     "max_services_per_member", settings.max_services_per_member)  # fmt: skip


def policy(settings: RegistrySettings, redis_url: str, gateways: list[dict[str, Any]] | None = None) -> UpstreamPolicy:
    """The mesh's upstream policy: the allowlist, and this registry, its Redis and every gateway as refused."""
    own = endpoints_of([redis_url]) + ([settings.listen] if settings.listen else [])
    gateway_urls = endpoints_of(g.get("base_url") for g in gateways or [])
    return UpstreamPolicy(settings.upstream_allow, (*own, *gateway_urls))


async def check_upstream(policy_now: UpstreamPolicy, url: str) -> None:
    """422 naming upstream_url when the URL may not be an upstream (loopback, metadata, the mesh's own parts)."""
    try:
        why = await policy_now.check_url(url)
    except PolicyError as exc:
        raise Problem(400, "invalid-parameter", str(exc), field="upstream_url") from exc
    if why is not None:
        raise Problem(
            422, "upstream-refused", f"upstream {url} is refused by the mesh's upstream policy: {why}; an operator "
            "may allowlist it (lienthong registry serve --upstream-allow)", field="upstream_url",
        )  # fmt: skip


def _endpoint_shape(endpoints: list[dict[str, Any]]) -> list[dict[str, Any]]:
    shaped = [{k: v for k, v in e.items() if k not in COSMETIC_ENDPOINT_FIELDS} for e in endpoints]
    return sorted(shaped, key=lambda e: (e.get("method", ""), e.get("path", "")))


def needs_approval(before: dict[str, Any], after: dict[str, Any]) -> bool:
    """Whether a change moves or reshapes the service (so an admin must look at it again)."""
    if any(before.get(k) != after.get(k) for k in MATERIAL_FIELDS):
        return True
    return _endpoint_shape(before.get("endpoints", [])) != _endpoint_shape(after.get("endpoints", []))


def updated(before: dict[str, Any], fields: dict[str, Any]) -> dict[str, Any]:
    """The service after a registration change: still approved, or pending with its live revision kept."""
    after = {k: v for k, v in before.items() if k != "live"}
    after.update(fields)
    if before["approved"] and not needs_approval(before, after):
        return after
    after["approved"] = False
    live = live_revision(before)
    if live is not None:
        after["live"] = live
    return after


def owns(who: Principal, service: dict[str, Any]) -> bool:
    """Admins and the provider member's integrators see a service as it is, pending changes included."""
    provider_member = "/".join(service["provider"].split("/")[:3])
    return who.role == "admin" or (who.role == "integrator" and who.member == provider_member)


def visible(who: Principal, service: dict[str, Any]) -> dict[str, Any] | None:
    """The service as `who` may see it: all of it for its owners; for anyone else only its approved (live)
    revision, without the upstream URL, or nothing while it has never been approved."""
    if owns(who, service):
        return service
    live = live_revision(service)
    if live is None:
        return None
    return {k: v for k, v in live.items() if k != "upstream_url"}


def grant_visible(who: Principal, grant: dict[str, Any]) -> bool:
    """An integrator sees the grants its member gives (as provider) or holds (as consumer); admins and gateways
    (whose snapshot carries every grant) see all."""
    if who.role != "integrator":
        return True
    prefix = f"{who.member}/"
    return str(grant["consumer"]).startswith(prefix) or str(grant["service"]).startswith(prefix)


# ---- grants checked against the service's OpenAPI document (issue 16) -----------------------------------------------

PURPOSES_EXTENSION = "x-lienthong-purposes"  # top level of a service's document: the purposes it may be granted for
MAX_FIELD_NODES = 2000  # schema objects visited per grant when looking up its fields


def declared_purposes(doc: Any) -> list[str] | None:
    """The purpose codes a service's document registers (`x-lienthong-purposes`: codes, or objects with a `code`);
    None when it registers none, and then any purpose may be granted (documents written before issue 16)."""
    raw = doc.get(PURPOSES_EXTENSION) if isinstance(doc, dict) else None
    if not isinstance(raw, list):
        return None
    codes = [p.get("code") if isinstance(p, dict) else p for p in raw]
    return [c for c in codes if isinstance(c, str)]


def check_grant(service: dict[str, Any], endpoints: Any, fields: Any, purposes: list[str]) -> None:
    """400 naming the first grant entry the service's document does not have, the way the API's request validation
    names body members (`endpoints.0`): an endpoint not in the service, a purpose it does not register, or a field
    that is a property of no success response of the granted endpoints."""
    known = {(e["method"], e["path"]) for e in service["endpoints"]}
    if endpoints != "*":
        for i, e in enumerate(endpoints):
            if (e["method"], e["path"]) not in known:
                raise Problem(400, "invalid-body", f"{service['id']} has no endpoint {e['method']} {e['path']}",
                              field=f"endpoints.{i}")  # fmt: skip
    doc = service.get("openapi")
    allowed = declared_purposes(doc)
    if allowed is not None:
        for i, purpose in enumerate(purposes):
            if purpose not in allowed:
                listed = ", ".join(allowed) or "none"
                raise Problem(400, "invalid-body", f"purpose {purpose!r} is not registered by {service['id']} "
                              f"({PURPOSES_EXTENSION}: {listed})", field=f"purposes.{i}")  # fmt: skip
    if not fields or not isinstance(doc, dict):
        return
    granted = sorted(known) if endpoints == "*" else [(e["method"], e["path"]) for e in endpoints]
    schemas = _success_schemas(doc, granted)
    if schemas is None:  # a granted answer the document does not describe: nothing to check its fields against
        return
    budget = [MAX_FIELD_NODES]
    for i, name in enumerate(fields):
        parts = name.split(".") if isinstance(name, str) else [""]
        if not any(_has_path(doc, s, parts, budget) for s in schemas):
            where = ", ".join(f"{m} {p}" for m, p in granted)
            raise Problem(400, "invalid-body", f"field {name!r} is not a property of any response of {where} in "
                          f"{service['id']}'s OpenAPI document", field=f"fields.{i}")  # fmt: skip


def _success_schemas(doc: dict[str, Any], granted: list[tuple[str, str]]) -> list[Any] | None:
    """The schemas of the 2xx answers of the granted operations (field limits apply to what a provider answers;
    problem documents are not data); None when one of them has no schema."""
    from registry.openapi_doc import RefError, resolve

    out: list[Any] = []
    raw_paths = doc.get("paths")
    paths: dict[str, Any] = raw_paths if isinstance(raw_paths, dict) else {}
    try:
        for method, path in granted:
            item = resolve(doc, paths.get(path))
            op = item.get(method.lower()) if isinstance(item, dict) else None
            responses = op.get("responses") if isinstance(op, dict) else None
            if not isinstance(responses, dict):
                return None
            for status, raw in responses.items():
                if not str(status).startswith("2"):
                    continue
                response = resolve(doc, raw)
                content = response.get("content") if isinstance(response, dict) else None
                if not isinstance(content, dict):
                    continue  # 204 and the like: no body, no fields
                for media in content.values():
                    if not isinstance(media, dict) or "schema" not in media:
                        return None
                    out.append(media["schema"])
    except RefError:
        return None  # the document was accepted at registration; a ref it cannot resolve checks nothing
    return out or None


def _has_path(doc: dict[str, Any], node: Any, parts: list[str], budget: list[int]) -> bool:
    """Whether the dotted field `parts` names a property under schema `node`: arrays are looked through (a grant's
    `members.id` is every member's id), allOf/anyOf/oneOf are each tried, and a schema that leaves its properties open
    (no `properties`, no `type` but object) accepts any name."""
    from registry.openapi_doc import RefError, resolve

    budget[0] -= 1
    if budget[0] < 0:
        return True  # too large to check: accept rather than refuse a grant the document may well allow
    try:
        node = resolve(doc, node)
    except RefError:
        return True
    if not parts:
        return True
    if node is True or node == {}:
        return True
    if not isinstance(node, dict):
        return False
    for key in ("allOf", "anyOf", "oneOf"):
        subs = node.get(key)
        if isinstance(subs, list) and any(_has_path(doc, s, parts, budget) for s in subs):
            return True
    if "items" in node:
        return _has_path(doc, node["items"], parts, budget)
    props = node.get("properties")
    if isinstance(props, dict) and parts[0] in props:
        return _has_path(doc, props[parts[0]], parts[1:], budget)
    extra = node.get("additionalProperties")
    if isinstance(extra, dict):
        return _has_path(doc, extra, parts[1:], budget)
    composed = any(k in node for k in ("allOf", "anyOf", "oneOf"))
    open_object = node.get("type") in (None, "object") and not isinstance(props, dict) and not composed
    return open_object and extra is not False
