"""A small X-Road REST client, written only from X-Road's documents: PR-REST 1.0.4 (Message Protocol for REST),
PR-MREST (Service Metadata Protocol for REST: listMethods, allowedMethods, getOpenAPI) and PR-META (listClients).

It imports nothing from lienthong, on purpose: it stands for an information system written against X-Road's
specification by someone who never saw lienthong's code, so a test that drives the mesh with it shows that the mesh
speaks X-Road and not merely agrees with its own client (tests/test_xroad_client.py checks the imports).

What it does, section by section:
- PR-REST §4.1: `{method} /r1/{serviceId}[/path][?query]` with the `X-Road-Client` header;
- PR-REST §4.2: each identifier part percent-encoded separately, "/" kept as the separator;
- PR-REST §4.3: optional `X-Road-Id`, `X-Road-UserId`, `X-Road-Issue`; `Content-Type` with charset for a body;
  `Accept` when asked for;
- PR-REST §4.6: an answer carrying `X-Road-Error` is X-Road's own error, its body `{type, message, detail}` (JSON,
  or XML elements of those names) is raised as XRoadError by raise_for_xroad;
- PR-REST §4.7: authenticates by its TLS client certificate only, never by a token of its own (an Authorization
  header given in `headers` is passed through, as X-Road passes headers meant for the provider).
"""

from __future__ import annotations

import json as jsonlib
import ssl
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

PROTOCOL_VERSION = "r1"  # PR-REST §4.1: "For the initial version r1 MUST be used"
JSON_BODY = "application/json; charset=utf-8"  # PR-REST §4.3: media type and charset for a body
Identifier = str | Sequence[str]  # "A/B/C/D" or its parts (a part may itself hold "/", PR-REST §4.2)


def encode_id(identifier: Identifier) -> str:
    """PR-REST §4.2: each part UTF-8 and percent-encoded on its own, joined by an unencoded "/"."""
    parts = identifier.split("/") if isinstance(identifier, str) else list(identifier)
    if not parts or any(p == "" for p in parts):
        raise ValueError(f"an X-Road identifier has no empty part: {identifier!r}")
    return "/".join(quote(p, safe="") for p in parts)


class XRoadError(Exception):
    """PR-REST §4.6: an error of X-Road itself (the `X-Road-Error` header was set), with its body's fields."""

    def __init__(self, status: int, type: str, message: str, detail: str, response: httpx.Response) -> None:
        super().__init__(f"{status} {type}: {message}")
        self.status = status
        self.type = type
        self.message = message
        self.detail = detail
        self.response = response


def _xml_fields(content: bytes) -> dict[str, str]:
    # PR-REST shows no XML error example: take the type/message/detail elements under the root, any namespace
    root = ET.fromstring(content)  # noqa: S314 - the security server's answer, parsed for three text fields
    return {child.tag.rsplit("}", 1)[-1]: (child.text or "") for child in root}


def raise_for_xroad(response: httpx.Response) -> httpx.Response:
    """Raise XRoadError when `response` carries X-Road-Error (PR-REST §4.3, §4.6); otherwise return it unchanged.
    A provider's own error (no X-Road-Error, PR-REST §4.6 category 1) is not X-Road's and is left to the caller."""
    header = response.headers.get("x-road-error")
    if header is None:
        return response
    media = response.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    fields: Mapping[str, Any] = {}
    try:
        if media.endswith("json"):
            loaded = response.json()
            fields = loaded if isinstance(loaded, dict) else {}
        elif media.endswith("xml"):
            fields = _xml_fields(response.content)
    except (ValueError, ET.ParseError):
        fields = {}
    kind = str(fields.get("type") or header)  # the header "contains only the error type"
    raise XRoadError(response.status_code, kind, str(fields.get("message") or ""), str(fields.get("detail") or ""),
                     response)  # fmt: skip


class XRoadClient:
    """One client subsystem talking to its security server: `client_id` is `INSTANCE/CLASS/MEMBER[/SUBSYSTEM]`,
    `cert` its TLS client certificate and key files, `verify` a CA file or an ssl.SSLContext for the security
    server's certificate (given a context, the client certificate is loaded into it). `accept` is sent as Accept
    on every call when set (PR-REST §4.3: the security server's own answers default to application/json)."""

    def __init__(
        self,
        security_server_url: str,
        client_id: Identifier,
        cert: tuple[str | Path, str | Path],
        verify: str | Path | ssl.SSLContext,
        accept: str | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.base_url = security_server_url.rstrip("/")
        self.client_id = encode_id(client_id)
        self.accept = accept
        context = verify if isinstance(verify, ssl.SSLContext) else ssl.create_default_context(cafile=str(verify))
        context.load_cert_chain(str(cert[0]), str(cert[1]))  # PR-REST §4.7: mutual TLS is how it authenticates
        # PR-REST §4.4: X-Road passes redirects on unmodified, and following them blindly is a risk
        self.http = httpx.Client(verify=context, timeout=timeout, follow_redirects=False)

    def __enter__(self) -> XRoadClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def url(self, service_id: Identifier, path: str = "") -> str:
        """PR-REST §4.1: `{ss}/r1/{serviceId}[/path]`; the path is the provider's, sent as given (its own
        characters that may not stand in a URI are percent-encoded, existing escapes kept)."""
        tail = quote(path, safe="/%:@!$&'()*+,;=-._~") if path else ""
        if tail and not tail.startswith("/"):
            tail = "/" + tail
        return f"{self.base_url}/{PROTOCOL_VERSION}/{encode_id(service_id)}{tail}"

    def headers(
        self,
        extra: Mapping[str, str] | None = None,
        *,
        xroad_id: str | None = None,
        user_id: str | None = None,
        issue: str | None = None,
    ) -> dict[str, str]:
        """PR-REST §4.3: the one mandatory header, X-Road-Client (once), and the optional ones when given."""
        out = {k: v for k, v in (extra or {}).items() if k.lower() != "x-road-client"}
        out["X-Road-Client"] = self.client_id
        for name, value in (("X-Road-Id", xroad_id), ("X-Road-UserId", user_id), ("X-Road-Issue", issue)):
            if value is not None:
                out[name] = value
        if self.accept is not None and not any(k.lower() == "accept" for k in out):
            out["Accept"] = self.accept
        return out

    def call(
        self,
        method: str,
        service_id: Identifier,
        path: str = "",
        *,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
        xroad_id: str | None = None,
        user_id: str | None = None,
        issue: str | None = None,
    ) -> httpx.Response:
        """One REST service call through the security server (PR-REST §4.1); the answer as it came."""
        sent = self.headers(headers, xroad_id=xroad_id, user_id=user_id, issue=issue)
        content = None
        if json is not None:
            content = jsonlib.dumps(json, ensure_ascii=False).encode("utf-8")
            if not any(k.lower() == "content-type" for k in sent):
                sent["Content-Type"] = JSON_BODY
        url = self.url(service_id, path)
        return self.http.request(method.upper(), url, headers=sent, content=content, params=params)

    @staticmethod
    def new_id() -> str:
        """An X-Road-Id: PR-REST §4.3 recommends a UUID."""
        return str(uuid.uuid4())

    # ---- metaservices ------------------------------------------------------------------------------------------

    def _meta(self, service_id: Identifier, params: Mapping[str, str] | None = None, accept: str | None = None,
              ) -> httpx.Response:  # fmt: skip
        extra = {"Accept": accept} if accept else None
        response = self.call("GET", service_id, params=params, headers=extra)
        raise_for_xroad(response)
        return response.raise_for_status()

    def list_methods(self, provider: Identifier) -> list[dict[str, Any]]:
        """PR-MREST §4 and Annex A: the REST services and endpoints `provider` (a client id) offers."""
        body: dict[str, Any] = self._meta(_service(provider, "listMethods"), accept="application/json").json()
        return list(body["service"])

    def allowed_methods(self, provider: Identifier) -> list[dict[str, Any]]:
        """PR-MREST §4: listMethods cut to what this client may call."""
        body: dict[str, Any] = self._meta(_service(provider, "allowedMethods"), accept="application/json").json()
        return list(body["service"])

    def get_openapi(self, provider: Identifier, service_code: str) -> dict[str, Any]:
        """PR-MREST §5: the OpenAPI description of `provider`'s service `service_code`, asked for as JSON."""
        params = {"serviceCode": service_code}
        description: dict[str, Any] = self._meta(_service(provider, "getOpenAPI"), params, "application/json").json()
        return description

    def list_clients(self, instance: str | None = None) -> list[dict[str, Any]]:
        """PR-META §2: GET {ss}/listClients (not under /r1), as JSON (Annex B), `xRoadInstance` for another
        instance's clients. X-Road-Client is sent as on every call: it names who asks."""
        params = {"xRoadInstance": instance} if instance else None
        headers = self.headers({"Accept": "application/json"})
        response = self.http.get(f"{self.base_url}/listClients", headers=headers, params=params)
        raise_for_xroad(response)
        body: dict[str, Any] = response.raise_for_status().json()
        return list(body["member"])


def _service(provider: Identifier, code: str) -> list[str]:
    parts = provider.split("/") if isinstance(provider, str) else list(provider)
    return [*parts, code]
