"""Admin commands for who takes part in the mesh: `members`, `subsystems`, `gateways` (add, list, show) and `keys`
(list, show: client keys of subsystems and signing keys of gateways), all through the registry API."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from registry.cli_common import api_options, echo_json, session, show

JSON_OPTION = click.option("--json", "as_json", is_flag=True, help="print the API's objects as JSON, not a table")


def read_jwk(path: Path) -> dict[str, Any]:
    """A public JWK from a .jwk/.json file, or the public half of a PEM private key."""
    from lienthong import keys

    text = path.read_text()
    if text.lstrip().startswith("{"):
        try:
            jwk: dict[str, Any] = json.loads(text)
        except json.JSONDecodeError as exc:
            raise click.BadParameter(f"{path} is not valid JSON: {exc}") from exc
        return jwk
    try:
        return keys.public_jwk(keys.load_private(path))
    except ValueError as exc:
        raise click.BadParameter(f"{path} is neither a JWK nor a PEM key: {exc}") from exc


@click.group("members")
def members_group() -> None:
    """Members of the mesh (ministries, agencies, provinces)."""


@members_group.command("add")
@click.argument("member_id")
@click.option("--name", required=True)
@click.option("--home-gateway", required=True, help="gateway code, e.g. national or nghean")
@api_options
def members_add(member_id: str, name: str, home_gateway: str, **api: Any) -> None:
    """Add member MEMBER_ID (VN/GOV/CODE or VN/PROV/CODE)."""
    with session(**api) as s:
        echo_json(s.run(lambda c: c.add_member(member_id, name, home_gateway)))


@members_group.command("list")
@click.option("--class", "member_class", default=None, help="only this member class, e.g. GOV or PROV")
@click.option("--gateway", default=None, help="only members whose home gateway is this code")
@JSON_OPTION
@api_options
def members_list(member_class: str | None, gateway: str | None, as_json: bool, **api: Any) -> None:
    """List members."""
    with session(**api) as s:
        items = s.run(lambda c: c.list_members())
    items = [m for m in items if (member_class is None or m["id"].split("/")[1] == member_class.upper())
             and (gateway is None or m.get("home_gateway") == gateway)]  # fmt: skip
    show(items, as_json, ("id", "home_gateway", "name"), "members")


@members_group.command("show")
@click.argument("member_id")
@api_options
def members_show(member_id: str, **api: Any) -> None:
    """Print member MEMBER_ID as the API holds it."""
    with session(**api) as s:
        echo_json(s.run(lambda c: c.get_member(member_id)))


@click.group("subsystems")
def subsystems_group() -> None:
    """Subsystems of members: the systems that provide services and call them."""


@subsystems_group.command("add")
@click.argument("subsystem_id")
@click.option("--name", required=True, help="a readable name, e.g. 'Ha Noi land register'")
@api_options
def subsystems_add(subsystem_id: str, name: str, **api: Any) -> None:
    """Add subsystem SUBSYSTEM_ID (VN/CLASS/MEMBER/CODE) of an existing member; its client keys and services
    (`keygen --register`, `services register`) need it first."""
    from lienthong import ids

    try:
        ids.validate("subsystem", subsystem_id, "SUBSYSTEM_ID")
    except ids.InvalidIdentifier as exc:
        raise click.BadParameter(exc.reason, param_hint="SUBSYSTEM_ID") from exc
    with session(**api) as s:
        echo_json(s.run(lambda c: c.add_subsystem(subsystem_id, name)))


@subsystems_group.command("list")
@click.option("--member", default=None, help="only this member's subsystems, e.g. VN/PROV/HANOI")
@JSON_OPTION
@api_options
def subsystems_list(member: str | None, as_json: bool, **api: Any) -> None:
    """List subsystems."""
    with session(**api) as s:
        items = s.run(lambda c: c.list_subsystems(member))
    show(items, as_json, ("id", "name"), "subsystems")


@subsystems_group.command("show")
@click.argument("subsystem_id")
@api_options
def subsystems_show(subsystem_id: str, **api: Any) -> None:
    """Print subsystem SUBSYSTEM_ID as the API holds it."""
    with session(**api) as s:
        echo_json(s.run(lambda c: c.get_subsystem(subsystem_id)))


@click.group("gateways")
def gateways_group() -> None:
    """Gateways: code, base URL and public signing keys."""


@gateways_group.command("add")
@click.argument("code")
@click.option("--base-url", required=True)
@click.option("--key-file", "key_files", multiple=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="the gateway's public JWK (or its PEM key, whose public half is sent); repeatable")  # fmt: skip
@api_options
def gateways_add(code: str, base_url: str, key_files: tuple[Path, ...], **api: Any) -> None:
    """Add gateway CODE."""
    jwks = [read_jwk(p) for p in key_files]
    with session(**api) as s:
        echo_json(s.run(lambda c: c.add_gateway(code, base_url, jwks)))


@gateways_group.command("list")
@JSON_OPTION
@api_options
def gateways_list(as_json: bool, **api: Any) -> None:
    """List gateways."""
    with session(**api) as s:
        items = s.run(lambda c: c.list_gateways())
    rows = [{**g, "active keys": sum(1 for k in g.get("keys", []) if not k.get("revoked"))} for g in items]
    if as_json:
        echo_json(items)
        return
    show(rows, False, ("code", "active keys", "base_url"), "gateways")


@gateways_group.command("show")
@click.argument("code")
@api_options
def gateways_show(code: str, **api: Any) -> None:
    """Print gateway CODE as the API holds it."""
    with session(**api) as s:
        echo_json(s.run(lambda c: c.get_gateway(code)))


@click.group("keys")
def keys_group() -> None:
    """Public keys the registry holds: client keys of subsystems and signing keys of gateways."""


def _all_keys(c: Any, subsystem: str | None, member: str | None, gateway: str | None, kind: str | None) -> list[Any]:
    """Each key with `owner` (a subsystem id or gateway:CODE) and `kind` added to the API's stored JWK."""
    from registry.client import RegistryError

    out: list[dict[str, Any]] = []
    if kind in (None, "client") and gateway is None:
        subsystems = [subsystem] if subsystem else [s["id"] for s in c.list_subsystems(member)]
        for sid in subsystems:
            try:
                held = c.list_client_keys(sid)
            except RegistryError as exc:
                if exc.status == 404 and not subsystem:
                    continue  # removed between the two calls
                raise
            out += [{"owner": sid, "kind": "client", **k} for k in held.get("keys", [])]
    if kind in (None, "gateway") and subsystem is None and member is None:
        gateways = [c.get_gateway(gateway)] if gateway else c.list_gateways()
        for g in gateways:
            out += [{"owner": f"gateway:{g['code']}", "kind": "gateway", **k} for k in g.get("keys", [])]
    return out


@keys_group.command("list")
@click.option("--subsystem", default=None, help="only this subsystem's client keys")
@click.option("--member", default=None, help="only client keys of this member's subsystems")
@click.option("--gateway", default=None, help="only this gateway's signing keys")
@click.option("--kind", type=click.Choice(["client", "gateway"]), default=None, help="only client or gateway keys")
@click.option("--active", is_flag=True, help="leave out revoked keys")
@JSON_OPTION
@api_options
def keys_list(
    subsystem: str | None, member: str | None, gateway: str | None, kind: str | None, active: bool, as_json: bool,
    **api: Any,
) -> None:  # fmt: skip
    """List keys, each with its owner (a subsystem, or gateway:CODE)."""
    with session(**api) as s:
        items = s.run(lambda c: _all_keys(c, subsystem, member, gateway, kind))
    items = [k for k in items if not (active and k.get("revoked"))]
    show(items, as_json, ("owner", "kid", "revoked", "added_at"), "keys")


@keys_group.command("show")
@click.argument("key_id", metavar="KID")
@click.option("--subsystem", default=None, help="look only at this subsystem's keys")
@api_options
def keys_show(key_id: str, subsystem: str | None, **api: Any) -> None:
    """Print key KID with its owner (exit 1 when no subsystem or gateway holds it)."""
    with session(**api) as s:
        found = [k for k in s.run(lambda c: _all_keys(c, subsystem, None, None, None)) if k.get("kid") == key_id]
    if not found:
        raise click.ClickException(f"no subsystem or gateway holds key {key_id} at {s.url} (asked with {s.key})")
    echo_json(found[0] if len(found) == 1 else found)
