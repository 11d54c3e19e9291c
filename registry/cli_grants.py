"""Admin commands for access: `clients` (add-key, revoke-key), `grants` (add, list, show, revoke), `purposes` (list,
show) and `snapshot show`, all through the registry API.

A purpose is registered by a service's OpenAPI document (`x-lienthong-purposes`, registry/service_rules.py); `purposes
list` shows each code with the services that register it and the grants that give it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from registry import keyfiles
from registry.cli_common import api_options, echo_json, home_registry_dir, session, show
from registry.cli_parties import JSON_OPTION, read_jwk


@click.group("clients")
def clients_group() -> None:
    """Client keys of consumer subsystems."""


@clients_group.command("add-key")
@click.argument("subsystem_id")
@click.option("--key-file", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="public JWK (or a PEM key, whose public half is sent)")  # fmt: skip
@click.option("--key-id", default=None, help="kid to register [default: the JWK's kid, else its thumbprint]")
@api_options
def clients_add_key(subsystem_id: str, key_file: Path, key_id: str | None, **api: Any) -> None:
    """Add a client key to SUBSYSTEM_ID; rotate by adding the new key, then revoking the old."""
    jwk = read_jwk(key_file)
    if key_id:
        jwk["kid"] = key_id
    with session(**api) as s:
        echo_json(s.run(lambda c: c.add_client_key(subsystem_id, jwk)))


@clients_group.command("revoke-key")
@click.argument("subsystem_id")
@click.argument("key_id")
@api_options
def clients_revoke_key(subsystem_id: str, key_id: str, **api: Any) -> None:
    """Revoke key KEY_ID of SUBSYSTEM_ID."""
    with session(**api) as s:
        echo_json(s.run(lambda c: c.revoke_client_key(subsystem_id, key_id)))


@click.group("grants")
def grants_group() -> None:
    """Grants: which consumer may call which service, for which purposes, seeing which fields."""


@grants_group.command("add")
@click.option("--consumer", required=True, help="consumer subsystem id")
@click.option("--service", required=True, help="service id")
@click.option("--purpose", "purposes", multiple=True, required=True, help="purpose code; repeatable")
@click.option("--default-purpose", default=None,
              help="one of the purposes, applied to calls without X-Purpose (X-Road clients) [default: the only "
                   "purpose]")  # fmt: skip
@click.option("--endpoint", "endpoints", multiple=True, help="'METHOD /path/{template}'; repeatable [default: all]")
@click.option("--field", "fields", multiple=True,
              help="dotted response field, a property of the service's OpenAPI response schemas; repeatable "
                   "[default: all]")  # fmt: skip
@click.option("--per-minute", type=click.IntRange(min=1), default=None)
@click.option("--per-day", type=click.IntRange(min=1), default=None)
@click.option("--disclosure-delay-days", type=click.IntRange(min=0, max=3650), default=0, show_default=True,
              help="withhold the accesses under this grant from the data subject's report this many days")  # fmt: skip
@click.option("--disclose-user", is_flag=True, help="the data subject's report may name the official who called")
@api_options
def grants_add(
    consumer: str, service: str, purposes: tuple[str, ...], default_purpose: str | None, endpoints: tuple[str, ...],
    fields: tuple[str, ...], per_minute: int | None, per_day: int | None, disclosure_delay_days: int,
    disclose_user: bool, **api: Any,
) -> None:  # fmt: skip
    """Grant CONSUMER access to SERVICE (admin). The registry refuses endpoints, fields and purposes the service's
    OpenAPI document does not have, naming the entry (e.g. fields.0)."""
    eps: str | list[dict[str, str]] = "*"
    if endpoints:
        eps = []
        for e in endpoints:
            method, _, path = e.strip().partition(" ")
            if not path.strip().startswith("/"):
                raise click.BadParameter(f"{e!r} is not 'METHOD /path'", param_hint="--endpoint")
            eps.append({"method": method.upper(), "path": path.strip()})
    quota = {k: v for k, v in {"per_minute": per_minute, "per_day": per_day}.items() if v is not None}
    with session(**api) as s:
        result = s.run(
            lambda c: c.add_grant(consumer, service, list(purposes), endpoints=eps, fields=list(fields) or None,
                                  quota=quota or None, default_purpose=default_purpose,
                                  disclosure_delay_days=disclosure_delay_days, disclose_user=disclose_user)
        )  # fmt: skip
    echo_json(result)


@grants_group.command("list")
@click.option("--consumer", default=None, help="only grants to this consumer subsystem")
@click.option("--service", default=None, help="only grants on this service")
@click.option("--purpose", default=None, help="only grants giving this purpose")
@click.option("--active", is_flag=True, help="leave out revoked grants")
@JSON_OPTION
@api_options
def grants_list(
    consumer: str | None, service: str | None, purpose: str | None, active: bool, as_json: bool, **api: Any
) -> None:
    """List grants."""
    with session(**api) as s:
        items = s.run(lambda c: c.list_grants(consumer=consumer, service=service))
    items = [g for g in items if (purpose is None or purpose in g["purposes"]) and not (active and g["revoked"])]
    show(items, as_json, ("id", "consumer", "service", "purposes", "revoked"), "grants")


@grants_group.command("show")
@click.argument("grant_id")
@api_options
def grants_show(grant_id: str, **api: Any) -> None:
    """Print grant GRANT_ID as the API holds it."""
    with session(**api) as s:
        echo_json(s.run(lambda c: c.get_grant(grant_id)))


@grants_group.command("revoke")
@click.argument("grant_id")
@api_options
def grants_revoke(grant_id: str, **api: Any) -> None:
    """Revoke GRANT_ID (admin); the record stays, marked revoked."""
    with session(**api) as s:
        echo_json(s.run(lambda c: c.revoke_grant(grant_id)))


@click.group("purposes")
def purposes_group() -> None:
    """Purposes of processing: registered by services' OpenAPI documents (x-lienthong-purposes), given by grants."""


def _purposes(services: list[dict[str, Any]], grants: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each purpose code with the services registering it (and their descriptions of it) and the grants giving it."""
    from registry.service_rules import PURPOSES_EXTENSION

    found: dict[str, dict[str, Any]] = {}

    def entry(code: str) -> dict[str, Any]:
        return found.setdefault(code, {"code": code, "services": [], "descriptions": {}, "grants": []})

    for svc in services:
        declared = svc.get("openapi", {}).get(PURPOSES_EXTENSION)
        for p in declared if isinstance(declared, list) else []:
            code = p.get("code") if isinstance(p, dict) else p
            if isinstance(code, str):
                entry(code)["services"].append(svc["id"])
                if isinstance(p, dict) and isinstance(p.get("description"), str):
                    entry(code)["descriptions"][svc["id"]] = p["description"]
    for g in grants:
        for code in g["purposes"]:
            entry(code)["grants"].append(g["id"])
    return [found[k] for k in sorted(found)]


@purposes_group.command("list")
@click.option("--service", default=None, help="only purposes this service registers or is granted for")
@click.option("--consumer", default=None, help="only purposes granted to this consumer subsystem")
@JSON_OPTION
@api_options
def purposes_list(service: str | None, consumer: str | None, as_json: bool, **api: Any) -> None:
    """List purposes: those services register and those grants give."""
    with session(**api) as s:
        services = s.run(lambda c: [c.get_service(service)] if service else c.list_services())
        grants = s.run(lambda c: c.list_grants(consumer=consumer, service=service))
    if consumer:  # only what this consumer holds, not what services offer
        services = []
    items = _purposes(services, grants)
    rows = [{**p, "services": len(p["services"]), "grants": len(p["grants"])} for p in items]
    if as_json:
        echo_json(items)
        return
    show(rows, False, ("code", "services", "grants"), "purposes")


@purposes_group.command("show")
@click.argument("code")
@api_options
def purposes_show(code: str, **api: Any) -> None:
    """Print purpose CODE: the services registering it and the grants giving it (exit 1 when none does)."""
    with session(**api) as s:
        found = [p for p in _purposes(s.run(lambda c: c.list_services()), s.run(lambda c: c.list_grants()))
                 if p["code"] == code]  # fmt: skip
    if not found:
        raise click.ClickException(f"no service at {s.url} registers purpose {code!r} and no grant gives it "
                                   f"(asked with {s.key})")  # fmt: skip
    echo_json(found[0])


@click.group("snapshot")
def snapshot_group() -> None:
    """The signed snapshot gateways download."""


@snapshot_group.command("show")
@click.option("--gateway", default=None, help="whose snapshot (required for admins)")
@click.option("--registry-key", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help=f"registry public JWK to verify with [default: <home>/registry/{keyfiles.SIGNING_PUB}]")  # fmt: skip
@click.option("--raw", is_flag=True, help="print the envelope itself (protocol §7.1: two compact JWS)")
@api_options
def snapshot_show(gateway: str | None, registry_key: Path | None, raw: bool, **api: Any) -> None:
    """Fetch the snapshot, check its signature and print its document."""
    from lienthong.keys import public_key_from_jwk
    from lienthong.snapshot import SnapshotError
    from lienthong.snapshot_wire import read_full

    with session(**api) as s:
        resp = s.run(lambda c: c.snapshot(gateway=gateway))
    if raw:
        click.echo(resp.text)
        return
    key_path = registry_key or home_registry_dir(api["home"]) / keyfiles.SIGNING_PUB
    if not key_path.exists():
        raise click.ClickException(f"no registry public key at {key_path} to verify the snapshot of {s.url} with; "
                                   "pass --registry-key or --home")  # fmt: skip
    try:
        doc = read_full(resp.content, public_key_from_jwk(json.loads(key_path.read_text())), gateway)
    except SnapshotError as exc:
        raise click.ClickException(f"the snapshot of {s.url} does not verify with {key_path}: {exc}") from exc
    echo_json(doc)
