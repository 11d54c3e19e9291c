"""X-Road's metaservices answered from the snapshot (protocol §2), in the shapes X-Road's documents give them.

- listMethods / allowedMethods: PR-MREST 0.8 §4, Annex A `restServiceDetailsListType`, examples B.1/B.2:
  `{"service": [{xroad_instance, member_class, member_code, subsystem_code, service_code, object_type: "SERVICE",
  service_type, endpoint_list: [{method, path}]}]}`. Annex A sets no `additionalProperties: false`, so lienthong's own
  members (`name`, `description`, `service_version`, `purposes`, an endpoint's `operation_id`/`summary`) ride along.
- getOpenAPI: PR-MREST §5 and Annex A: the service's OpenAPI document, JSON or (on `Accept: text/yaml`) YAML; 400
  without `serviceCode`.
- listClients: PR-META 2.16 §2, Annex A (XML `clientList`), Annex B (JSON `member`), example C.1: every member and
  subsystem of the instance, XML by default, JSON when the Accept header asks for application/json; `xRoadInstance`
  selects the instance.
The caller is already authenticated; `allowedMethods` limits the answer to what its grants allow.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qs
from xml.sax.saxutils import escape

import orjson
import yaml

from lienthong.problem import Problem
from lienthong.snapshot import Service, Snapshot

JSON = "application/json"
# PR-REST §4.3 Content-Type: what the security server itself answers names its character encoding
JSON_UTF8 = "application/json;charset=utf-8"
_TEMPLATE = re.compile(r"\{[^/{}]*\}")  # an OpenAPI path parameter; X-Road writes it as the wildcard `*` (B.1)


def _accepts(accept: str, media_type: str) -> bool:
    return any(part.split(";")[0].strip().lower() == media_type for part in accept.split(","))


def _query(query: bytes) -> dict[str, list[str]]:
    return parse_qs(query.decode("latin-1"))


def _id_fields(ident: str) -> dict[str, str]:
    """`VN/GOV/BCA[/population]` as X-Road's identifier members (PR-META Annex B `xroadIdentifier.id`)."""
    parts = ident.split("/")
    out = {"xroad_instance": parts[0], "member_class": parts[1], "member_code": parts[2]}
    if len(parts) > 3:
        out["subsystem_code"] = parts[3]
    return out


# -- listMethods, allowedMethods (PR-MREST §4) ----------------------------------------------------------------------


def _endpoints(service: Service, allowed: set[tuple[str, str]] | None) -> list[dict[str, Any]]:
    out = []
    for ep in service.endpoints:
        if not ep.enabled or (allowed is not None and (ep.method, ep.path) not in allowed):
            continue
        entry: dict[str, Any] = {"method": ep.method, "path": _TEMPLATE.sub("*", ep.path)}
        if ep.operation_id:
            entry["operation_id"] = ep.operation_id  # lienthong's own, beside PR-MREST's method and path
        if ep.summary:
            entry["summary"] = ep.summary
        out.append(entry)
    return out


def _service_entry(service: Service, endpoints: list[dict[str, Any]]) -> dict[str, Any]:
    entry: dict[str, Any] = {
        **_id_fields(service.provider),
        "object_type": "SERVICE",
        "service_code": service.code,
        # B.1: OPENAPI for a service described by an OpenAPI document, REST for one given as bare endpoints
        "service_type": "OPENAPI" if isinstance(service.doc.get("openapi"), dict) else "REST",
        "endpoint_list": endpoints,
    }
    if service.doc.get("version_label"):
        entry["service_version"] = service.doc["version_label"]  # Annex A `serviceVersion`
    for extra in ("name", "description"):  # lienthong's own members
        if service.doc.get(extra) is not None:
            entry[extra] = service.doc[extra]
    return entry


def _provider_services(snapshot: Snapshot, subsystem: str) -> list[Service]:
    if subsystem not in snapshot.subsystems:
        raise Problem(404, "unknown-service", f"no subsystem {subsystem} in the mesh", field="path")
    return [s for s in snapshot.services.values() if s.provider == subsystem and s.approved]


def list_methods(snapshot: Snapshot, subsystem: str) -> dict[str, Any]:
    services = _provider_services(snapshot, subsystem)
    return {"service": [_service_entry(s, _endpoints(s, None)) for s in services]}


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
            entry["purposes"] = sorted(set().union(*(g.purposes for g in grants)))  # lienthong's own
            out.append(entry)
    return {"service": out}


# -- getOpenAPI (PR-MREST §5) --------------------------------------------------------------------------------------


def get_openapi(snapshot: Snapshot, subsystem: str, query: bytes) -> dict[str, Any]:
    codes = _query(query).get("serviceCode")
    if not codes or not codes[0]:
        raise Problem(400, "invalid-parameter", "getOpenAPI needs ?serviceCode=CODE", field="serviceCode")
    if subsystem not in snapshot.subsystems:
        raise Problem(404, "unknown-service", f"no subsystem {subsystem} in the mesh", field="path")
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


# -- listClients (PR-META §2) --------------------------------------------------------------------------------------


def list_clients(snapshot: Snapshot, query: bytes = b"") -> dict[str, Any]:
    """PR-META Annex B `clientList`: members, then each member's subsystems, named as C.1 names them."""
    instances = _query(query).get("xRoadInstance")
    instance = instances[0] if instances else None
    out: list[dict[str, Any]] = []
    subsystems_of: dict[str, list[dict[str, Any]]] = {}
    for s in snapshot.subsystems.values():
        subsystems_of.setdefault(str(s.get("member") or "/".join(str(s["id"]).split("/")[:3])), []).append(s)
    for ident in sorted(set(snapshot.members) | set(subsystems_of)):
        if instance is not None and ident.split("/")[0] != instance:
            continue
        member_name = snapshot.members.get(ident, {}).get("name")
        entry: dict[str, Any] = {"id": {**_id_fields(ident), "object_type": "MEMBER"}}
        if member_name is not None:
            entry["name"] = member_name
        out.append(entry)
        for s in sorted(subsystems_of.get(ident, []), key=lambda s: str(s["id"])):
            sub: dict[str, Any] = {"id": {**_id_fields(str(s["id"])), "object_type": "SUBSYSTEM"}}
            if member_name is not None:
                sub["name"] = member_name
            if s.get("name") is not None:
                sub["subsystem_name"] = s["name"]
            out.append(sub)
    return {"member": out}


_XML_ID = (
    ("xroad_instance", "xRoadInstance"),
    ("member_class", "memberClass"),
    ("member_code", "memberCode"),
    (
        "subsystem_code",
        "subsystemCode",
    ),
)


def client_list_xml(doc: dict[str, Any]) -> bytes:
    """The same list as PR-META Annex A's `clientList` element (namespaces and order as example C.1)."""
    lines = [
        '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>',
        '<ns2:clientList xmlns:ns1="http://x-road.eu/xsd/identifiers" xmlns:ns2="http://x-road.eu/xsd/xroad.xsd">',
    ]
    for entry in doc["member"]:
        ident = entry["id"]
        lines.append(f'<ns2:member><ns2:id ns1:objectType="{ident["object_type"]}">')
        lines += [f"<ns1:{tag}>{escape(ident[key])}</ns1:{tag}>" for key, tag in _XML_ID if key in ident]
        lines.append("</ns2:id>")
        if "name" in entry:
            lines.append(f"<ns2:name>{escape(str(entry['name']))}</ns2:name>")
        if "subsystem_name" in entry:
            lines.append(f"<ns2:subsystemName>{escape(str(entry['subsystem_name']))}</ns2:subsystemName>")
        lines.append("</ns2:member>")
    lines.append("</ns2:clientList>")
    return "\n".join(lines).encode()


# -- one entry point for the call path ----------------------------------------------------------------------------


def answer(
    snapshot: Snapshot, name: str, subsystem: str | None, client: str, query: bytes, accept: str
) -> tuple[str, bytes]:
    """(content type, body) of one metaservice call."""
    if name == "listClients":
        clients = list_clients(snapshot, query)
        if _accepts(accept, JSON):  # PR-META §2: JSON only when asked; text/xml otherwise
            return JSON_UTF8, orjson.dumps(clients)
        return "text/xml;charset=utf-8", client_list_xml(clients)
    if name == "listMethods":
        return JSON_UTF8, orjson.dumps(list_methods(snapshot, str(subsystem)))
    if name == "allowedMethods":
        return JSON_UTF8, orjson.dumps(allowed_methods(snapshot, str(subsystem), client))
    document = get_openapi(snapshot, str(subsystem), query)
    if _accepts(accept, "text/yaml") and not _accepts(accept, JSON):  # PR-MREST Annex A: JSON or text/yaml
        return "text/yaml;charset=utf-8", yaml.safe_dump(document, sort_keys=False, allow_unicode=True).encode()
    return JSON_UTF8, orjson.dumps(document)
