"""Admin commands for services: `services` (register, approve, list, show, endpoints) and `catalog search`, all
through the registry API."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from registry.cli_common import api_options, echo_json, session, show
from registry.cli_parties import JSON_OPTION


def read_document(path: Path) -> dict[str, Any]:
    import yaml

    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise click.BadParameter(f"{path} is not JSON or YAML: {exc}") from exc
    if not isinstance(doc, dict):
        raise click.BadParameter(f"{path} does not hold an OpenAPI object")
    return doc


@click.group("services")
def services_group() -> None:
    """Services and their OpenAPI documents."""


@services_group.command("register")
@click.argument("service_id")
@click.option("--openapi", "openapi_file", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="the service's OpenAPI 3 document (JSON or YAML)")  # fmt: skip
@click.option("--gateway", required=True, help="code of the hosting gateway")
@click.option("--upstream", required=True, help="upstream URL (only the hosting gateway receives it)")
@click.option("--name", default=None, help="[default: the document's info.title]")
@click.option("--description", default=None, help="[default: the document's info.description]")
@click.option("--version-label", default="v1", show_default=True)
@click.option("--timeout-ms", type=int, default=5000, show_default=True)
@api_options
def services_register(
    service_id: str, openapi_file: Path, gateway: str, upstream: str, name: str | None, description: str | None,
    version_label: str, timeout_ms: int, **api: Any,
) -> None:  # fmt: skip
    """Register SERVICE_ID (VN/CLASS/MEMBER/SUBSYSTEM/SERVICE); it stays disabled until an admin approves it.

    For an upstream API that is not a lienthong connector: a lienthong connector registers its own service when it
    starts (`lienthong connector serve --registry ...`), so it needs no `services register`."""
    from lienthong import ids

    try:
        ids.validate("service", service_id, "SERVICE_ID")
    except ids.InvalidIdentifier as exc:
        raise click.BadParameter(exc.reason, param_hint="SERVICE_ID") from exc
    doc = read_document(openapi_file)
    info: dict[str, Any] = doc["info"] if isinstance(doc.get("info"), dict) else {}
    title = name or str(info.get("title") or service_id.rsplit("/", 1)[-1])
    text = description if description is not None else str(info.get("description") or "")
    with session(**api) as s:
        result = s.run(
            lambda c: c.register_service(service_id, openapi=doc, gateway=gateway, upstream_url=upstream, name=title,
                                         description=text, version_label=version_label, timeout_ms=timeout_ms),
            hints={409: f"{service_id} is registered already. A lienthong connector registers (and updates) its own "
                        "service when it starts (`lienthong connector serve --registry ...`); `services register` is "
                        "for upstreams that are not lienthong connectors. `lienthong services show` shows it."},
        )  # fmt: skip
    echo_json(result)


@services_group.command("approve")
@click.argument("service_id")
@api_options
def services_approve(service_id: str, **api: Any) -> None:
    """Approve SERVICE_ID (admin)."""
    with session(**api) as s:
        echo_json(s.run(lambda c: c.approve_service(service_id)))


@services_group.command("list")
@click.option("--provider", default=None, help="only services of this provider subsystem, e.g. VN/GOV/BCA/population")
@click.option("--gateway", default=None, help="only services hosted by this gateway")
@click.option("--pending", is_flag=True, help="only services waiting for approval")
@click.option("--approved", is_flag=True, help="only approved services")
@JSON_OPTION
@api_options
def services_list(
    provider: str | None, gateway: str | None, pending: bool, approved: bool, as_json: bool, **api: Any
) -> None:
    """List services (with their OpenAPI documents in --json)."""
    if pending and approved:
        raise click.UsageError("--pending and --approved exclude each other")
    with session(**api) as s:
        items = s.run(lambda c: c.list_services(provider=provider, gateway=gateway))
    if pending or approved:
        items = [x for x in items if bool(x.get("approved")) == approved]
    show(items, as_json, ("id", "gateway", "approved", "version_label"), "services")


@services_group.command("show")
@click.argument("service_id")
@api_options
def services_show(service_id: str, **api: Any) -> None:
    """Print service SERVICE_ID as the API holds it (its OpenAPI document included)."""
    with session(**api) as s:
        echo_json(s.run(lambda c: c.get_service(service_id)))


@services_group.command("endpoints")
@click.argument("service_id")
@click.option("--method", default=None, help="only this HTTP method")
@click.option("--enabled/--disabled", "enabled", default=None, help="only enabled, or only disabled, endpoints")
@JSON_OPTION
@api_options
def services_endpoints(
    service_id: str, method: str | None, enabled: bool | None, as_json: bool, **api: Any
) -> None:  # fmt: skip
    """List the endpoints of SERVICE_ID (derived by the registry from its OpenAPI document)."""
    with session(**api) as s:
        items = s.run(lambda c: c.get_service(service_id))["endpoints"]
    items = [e for e in items if (method is None or e["method"] == method.upper())
             and (enabled is None or bool(e.get("enabled")) == enabled)]  # fmt: skip
    show(items, as_json, ("method", "path", "enabled", "operation_id"), f"endpoints of {service_id}")


@click.group("catalog")
def catalog_group() -> None:
    """The service catalogue: find services, read their OpenAPI documents and endpoints."""


@catalog_group.command("search")
@click.argument("text", default="")
@JSON_OPTION
@api_options
def catalog_search(text: str, as_json: bool, **api: Any) -> None:
    """Search services by text over names, descriptions and OpenAPI summaries (empty TEXT lists them all)."""
    import sys

    with session(**api) as s:
        items = s.run(lambda c: c.search(text))
    show(items, as_json or not sys.stdout.isatty(), ("id", "version_label", "approved", "name"),
         f"services matching {text!r}" if text else "services")  # fmt: skip
