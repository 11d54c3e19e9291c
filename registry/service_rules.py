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
