"""X-Road's metaservices answered from the snapshot (protocol §2): listClients, listMethods, allowedMethods,
getOpenAPI. The caller is already authenticated; `allowedMethods` limits the answer to what its grants allow.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs

from lienthong.problem import Problem
from lienthong.snapshot import Service, Snapshot


def _endpoints(service: Service, allowed: set[tuple[str, str]] | None) -> list[dict[str, Any]]:
    out = []
    for ep in service.endpoints:
        if not ep.enabled or (allowed is not None and (ep.method, ep.path) not in allowed):
            continue
        out.append({"method": ep.method, "path": ep.path, "operation_id": ep.operation_id, "summary": ep.summary})
    return out


def _service_entry(service: Service, endpoints: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "id": service.id,
        "service_code": service.code,
        "version": service.doc.get("version_label"),
        "name": service.doc.get("name"),
        "description": service.doc.get("description"),
        "endpoints": endpoints,
    }


def _provider_services(snapshot: Snapshot, subsystem: str) -> list[Service]:
    if subsystem not in snapshot.subsystems:
        raise Problem(404, "unknown-service", f"no subsystem {subsystem} in the mesh", field="path")
    return [s for s in snapshot.services.values() if s.provider == subsystem and s.approved]


def list_clients(snapshot: Snapshot) -> dict[str, Any]:
    return {
        "clients": [
            {"id": s["id"], "member": s.get("member"), "name": s.get("name")}
            for s in sorted(snapshot.subsystems.values(), key=lambda s: str(s["id"]))
        ]
    }


def list_methods(snapshot: Snapshot, subsystem: str) -> dict[str, Any]:
    services = _provider_services(snapshot, subsystem)
    return {"subsystem": subsystem, "services": [_service_entry(s, _endpoints(s, None)) for s in services]}


def allowed_methods(snapshot: Snapshot, subsystem: str, client: str) -> dict[str, Any]:
    out = []
    for service in _provider_services(snapshot, subsystem):
        grants = snapshot.grants.get((client, service.id), [])
        if not grants:
            continue
        if any(g.endpoints is None for g in grants):
            allowed = None
        else:
            allowed = set().union(*(g.endpoints or frozenset() for g in grants))
        endpoints = _endpoints(service, allowed)
        if endpoints:
            entry = _service_entry(service, endpoints)
            entry["purposes"] = sorted(set().union(*(g.purposes for g in grants)))
            out.append(entry)
    return {"subsystem": subsystem, "client": client, "services": out}


def get_openapi(snapshot: Snapshot, subsystem: str, query: bytes) -> dict[str, Any]:
    params = parse_qs(query.decode("latin-1"))
    codes = params.get("serviceCode")
    if not codes or not codes[0]:
        raise Problem(400, "invalid-parameter", "getOpenAPI needs ?serviceCode=CODE", field="serviceCode")
    service = snapshot.services.get(f"{subsystem}/{codes[0]}")
    if service is None or not service.approved:
        raise Problem(404, "unknown-service", f"no service {codes[0]} under {subsystem}", field="serviceCode")
    document = service.doc.get("openapi")
    if isinstance(document, dict):
        return document
    # The snapshot may carry only the endpoints; describe those as a minimal OpenAPI document.
    paths: dict[str, dict[str, Any]] = {}
    for ep in service.endpoints:
        if ep.enabled:
            op: dict[str, Any] = {"responses": {"200": {"description": "found"}}}
            if ep.operation_id:
                op["operationId"] = ep.operation_id
            if ep.summary:
                op["summary"] = ep.summary
            paths.setdefault(ep.path, {})[ep.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": service.doc.get("name") or service.code, "version": service.doc.get("version_label", "v1")},
        "paths": paths,
    }
