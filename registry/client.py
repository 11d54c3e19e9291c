"""A Python client for the registry API (openapi/registry.yaml): signs its own short registry tokens (protocol §4.3)
and raises RegistryError carrying the problem document when the registry refuses."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from lienthong import ids, keys, pki, tokens
from lienthong.keys import PrivateKey


class RegistryError(Exception):
    """The registry answered with an error; `problem` is its problem+json body (or a stand-in)."""

    def __init__(self, status: int, problem: dict[str, Any]) -> None:
        self.status = status
        self.problem = problem
        detail = problem.get("detail") or problem.get("title") or f"HTTP {status}"
        field = problem.get("field")
        super().__init__(f"{status} {problem.get('code', 'error')}: {detail}" + (f" (field: {field})" if field else ""))


def _id_path(ident: str) -> str:
    """An identifier in a path is written out segment by segment (see openapi/registry.yaml)."""
    return "/".join(quote(part, safe="") for part in ident.split("/"))


class RegistryClient:
    def __init__(
        self,
        base_url: str,
        key_path: str | Path | None = None,
        kid: str | None = None,
        iss: str = "admin",
        *,
        key: PrivateKey | None = None,
        timeout: float = 10.0,
        ca: str | Path | None = None,
    ) -> None:
        """`ca`: the mesh CA certificate an https registry's certificate must chain to (protocol §9)."""
        if key is None:
            if key_path is None:
                raise ValueError("give key_path or key")
            key = keys.load_private(key_path)
        self.key = key
        self.kid = kid or keys.public_jwk(key)["kid"]
        self.iss = iss
        self.base_url = base_url.rstrip("/")
        verify: ssl.SSLContext | bool = pki.client_context(Path(ca)) if ca is not None else True
        self.http = httpx.Client(base_url=self.base_url, timeout=timeout, verify=verify)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def token(self, lifetime: int = 60) -> str:
        return tokens.sign(self.key, self.kid, {"iss": self.iss, "sub": self.iss, "aud": "registry"}, lifetime=lifetime)

    def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> httpx.Response:
        """One authenticated call; raises RegistryError for any 4xx/5xx."""
        hdrs = {"Authorization": f"Bearer {self.token()}", **(headers or {})}
        kwargs: dict[str, Any] = {"json": json, "params": params, "headers": hdrs}
        if timeout is not None:
            kwargs["timeout"] = timeout
        try:
            resp = self.http.request(method, "/v1" + path, **kwargs)
        except httpx.HTTPError as exc:
            raise RegistryError(0, {"code": "unreachable", "detail": f"cannot reach {self.base_url}: {exc}"}) from exc
        if resp.status_code >= 400:
            try:
                problem = resp.json()
            except ValueError:
                problem = {"detail": resp.text[:500]}
            if not isinstance(problem, dict):
                problem = {"detail": str(problem)}
            raise RegistryError(resp.status_code, problem)
        return resp

    def _call(self, method: str, path: str, if_match: int | None = None, **kw: Any) -> Any:
        headers = {"If-Match": f'"{if_match}"'} if if_match is not None else None
        return self.request(method, path, headers=headers, **kw).json()

    # members and subsystems
    def add_member(self, member_id: str, name: str, home_gateway: str) -> dict[str, Any]:
        return self._call("POST", "/members", json={"id": member_id, "name": name, "home_gateway": home_gateway})

    def get_member(self, member_id: str) -> dict[str, Any]:
        return self._call("GET", "/members/" + _id_path(ids.validate("member", member_id)))

    def update_member(self, member_id: str, if_match: int | None = None, **fields: Any) -> dict[str, Any]:
        path = "/members/" + _id_path(ids.validate("member", member_id))
        return self._call("PATCH", path, if_match, json=fields)

    def list_members(self) -> list[dict[str, Any]]:
        return self._call("GET", "/members")["items"]

    def add_subsystem(self, subsystem_id: str, name: str) -> dict[str, Any]:
        return self._call("POST", "/subsystems", json={"id": subsystem_id, "name": name})

    def get_subsystem(self, subsystem_id: str) -> dict[str, Any]:
        return self._call("GET", "/subsystems/" + _id_path(ids.validate("subsystem", subsystem_id)))

    def list_subsystems(self, member: str | None = None) -> list[dict[str, Any]]:
        params = {"member": member} if member else None
        return self._call("GET", "/subsystems", params=params)["items"]

    # gateways
    def add_gateway(self, code: str, base_url: str, jwks: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        body = {"code": code, "base_url": base_url, "keys": jwks or []}
        return self._call("POST", "/gateways", json=body)

    def get_gateway(self, code: str) -> dict[str, Any]:
        return self._call("GET", f"/gateways/{quote(code, safe='')}")

    def list_gateways(self) -> list[dict[str, Any]]:
        return self._call("GET", "/gateways")["items"]

    def update_gateway(self, code: str, base_url: str, if_match: int | None = None) -> dict[str, Any]:
        return self._call("PATCH", f"/gateways/{quote(code, safe='')}", if_match, json={"base_url": base_url})

    def add_gateway_key(self, code: str, jwk: dict[str, Any]) -> dict[str, Any]:
        return self._call("POST", f"/gateways/{quote(code, safe='')}/keys", json=_public(jwk))

    def revoke_gateway_key(self, code: str, kid: str) -> dict[str, Any]:
        return self._call("POST", f"/gateways/{quote(code, safe='')}/keys/{quote(kid, safe='')}/revoke")

    # services
    def register_service(
        self,
        service_id: str,
        *,
        openapi: dict[str, Any],
        gateway: str,
        upstream_url: str,
        name: str,
        version_label: str = "v1",
        description: str = "",
        timeout_ms: int = 5000,
    ) -> dict[str, Any]:
        parsed = ids.parse("service", service_id)
        body = {
            "subsystem": parsed.subsystem_id,
            "code": parsed.service_code,
            "version_label": version_label,
            "name": name,
            "description": description,
            "gateway": gateway,
            "upstream_url": upstream_url,
            "timeout_ms": timeout_ms,
            "openapi": openapi,
        }
        return self._call("POST", "/services", json=body)

    def _service_path(self, service_id: str) -> str:
        return "/services/" + _id_path(ids.validate("service", service_id))

    def get_service(self, service_id: str) -> dict[str, Any]:
        return self._call("GET", self._service_path(service_id))

    def list_services(self, provider: str | None = None, gateway: str | None = None) -> list[dict[str, Any]]:
        params = {k: v for k, v in {"provider": provider, "gateway": gateway}.items() if v}
        return self._call("GET", "/services", params=params or None)["items"]

    def update_service(self, service_id: str, body: dict[str, Any], if_match: int | None = None) -> dict[str, Any]:
        return self._call("PUT", self._service_path(service_id), if_match, json=body)

    def approve_service(self, service_id: str, if_match: int | None = None) -> dict[str, Any]:
        return self._call("POST", self._service_path(service_id) + "/approve", if_match)

    def set_endpoint(self, service_id: str, method: str, path: str, enabled: bool) -> dict[str, Any]:
        body = {"method": method.upper(), "path": path, "enabled": enabled}
        return self._call("PATCH", self._service_path(service_id) + "/endpoints", json=body)

    # client keys
    def _client_path(self, subsystem_id: str) -> str:
        return "/clients/" + _id_path(ids.validate("subsystem", subsystem_id)) + "/keys"

    def add_client_key(self, subsystem_id: str, jwk: dict[str, Any]) -> dict[str, Any]:
        return self._call("POST", self._client_path(subsystem_id), json=_public(jwk))

    def list_client_keys(self, subsystem_id: str) -> dict[str, Any]:
        return self._call("GET", self._client_path(subsystem_id))

    def revoke_client_key(self, subsystem_id: str, kid: str) -> dict[str, Any]:
        return self._call("POST", self._client_path(subsystem_id) + f"/{quote(kid, safe='')}/revoke")

    # grants
    def add_grant(
        self,
        consumer: str,
        service: str,
        purposes: list[str],
        *,
        endpoints: str | list[dict[str, str]] = "*",
        fields: list[str] | None = None,
        quota: dict[str, int] | None = None,
        default_purpose: str | None = None,
        disclosure_delay_days: int = 0,
        disclose_user: bool = False,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "consumer": consumer,
            "service": service,
            "endpoints": endpoints,
            "purposes": purposes,
            "fields": fields,
        }
        if quota:
            body["quota"] = quota
        if default_purpose is not None:
            body["default_purpose"] = default_purpose
        if disclosure_delay_days:
            body["disclosure_delay_days"] = disclosure_delay_days
        if disclose_user:
            body["disclose_user"] = True
        return self._call("POST", "/grants", json=body)

    def get_grant(self, grant_id: str) -> dict[str, Any]:
        return self._call("GET", f"/grants/{quote(grant_id, safe='')}")

    def list_grants(self, consumer: str | None = None, service: str | None = None) -> list[dict[str, Any]]:
        params = {k: v for k, v in {"consumer": consumer, "service": service}.items() if v}
        return self._call("GET", "/grants", params=params or None)["items"]

    def revoke_grant(self, grant_id: str) -> dict[str, Any]:
        return self._call("POST", f"/grants/{quote(grant_id, safe='')}/revoke")

    # certificates (protocol §9)
    def request_certificate(self, csr_pem: str | bytes) -> dict[str, Any]:
        """A certificate for the identity this client's key stands for: {"certificate", "ca", "serial",
        "not_after"}."""
        csr = csr_pem.decode() if isinstance(csr_pem, bytes) else csr_pem
        return self._call("POST", "/certificates", json={"csr": csr})

    # catalog, change log, snapshot
    def search(self, q: str = "") -> list[dict[str, Any]]:
        return self._call("GET", "/catalog", params={"q": q})["items"]

    def get_openapi(self, service_id: str) -> dict[str, Any]:
        return self._call("GET", "/catalog/" + _id_path(ids.validate("service", service_id)) + "/openapi")

    def list_methods(self, service_id: str) -> dict[str, Any]:
        return self._call("GET", "/catalog/" + _id_path(ids.validate("service", service_id)) + "/methods")

    def changes(self, since: int = 0, limit: int = 100) -> list[dict[str, Any]]:
        return self._call("GET", "/changes", params={"since": since, "limit": limit})["items"]

    def snapshot(
        self, gateway: str | None = None, held: int | None = None, wait: int = 0, full: bool = False
    ) -> httpx.Response:
        """The raw response: 200 with the envelope of protocol §7.1 (a delta from `held` unless `full`), or 304
        when `held` is still current."""
        params: dict[str, Any] = {}
        if gateway:
            params["gateway"] = gateway
        if wait:
            params["wait"] = wait
        if full:
            params["full"] = "true"
        headers = {"If-None-Match": f'"{held}"'} if held is not None else None
        return self.request("GET", "/snapshot", params=params, headers=headers, timeout=wait + 10.0)


def _public(jwk: dict[str, Any]) -> dict[str, Any]:
    """Only the public members of a JWK are sent; a private part never leaves this process."""
    return {k: v for k, v in jwk.items() if k in ("kty", "crv", "x", "y", "kid", "alg", "use")}
