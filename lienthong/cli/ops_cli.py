"""`lienthong ops`: tokens for a gateway's operations API and its dashboard (gateway/ops_auth.py).

`ops login` mints a short-lived operator token with the gateway's own key (whoever can read the gateway's data dir
is its operator) or an operator key the gateway trusts (--ops-operator-key), or, with --as, a member token with one
of the member's client keys; it prints the token and a dashboard link that carries it in the URL fragment, which
never reaches a server or a log: the page moves it into its session storage and off the address bar.
`ops keygen` makes an operator key pair whose public JWK a gateway is given with --ops-operator-key.
"""

from __future__ import annotations

import time
from pathlib import Path

import click
import orjson

from gateway.cli import OPS_URL_FILE
from gateway.ops_auth import DEFAULT_OPERATOR_LIFETIME, OPERATOR_MAX_LIFETIME, mint_member_token, mint_operator_token
from gateway.settings import KEY_FILE
from lienthong import ids, keys
from lienthong.home import MeshPaths, home_option
from lienthong.tokens import MAX_CLIENT_TOKEN_LIFETIME


@click.group("ops")
def ops_group() -> None:
    """Log in to a gateway's operations API and dashboard."""


@ops_group.command("login")
@click.option("--gateway", "code", required=True, help="The gateway's code, e.g. national.")
@home_option("The mesh's folder (as `lienthong up`); the data dir is HOME/gateways/CODE.")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="The gateway's data dir, when it is not under --home.")  # fmt: skip
@click.option("--url", default=None, help="The gateway's operations URL; default the one it wrote in its data dir.")
@click.option("--minutes", type=click.IntRange(1, OPERATOR_MAX_LIFETIME // 60), default=DEFAULT_OPERATOR_LIFETIME // 60,
              show_default=True, help="How long the token lasts.")  # fmt: skip
@click.option(
    "--key",
    "key_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Sign with this key (PEM): an operator key, or with --as a client key; default the gateway's key.",
)
@click.option("--kid", default=None, help="The key's kid; default its thumbprint.")
@click.option("--as", "subsystem", default=None,
              help="Log in as this member's subsystem (VN/CLASS/MEMBER/SUBSYSTEM) with its client --key: the token "
                   "then sees only that member's records, for at most 5 minutes.")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print JSON: token, dashboard link, expiry.")
def login(
    code: str, home: Path, data_dir: Path | None, url: str | None, minutes: int, key_file: Path | None,
    kid: str | None, subsystem: str | None, as_json: bool,
) -> None:  # fmt: skip
    """Mint a token for gateway CODE's operations API and print a dashboard link that logs in with it."""
    try:
        ids.validate("gateway", code, "--gateway")
        if subsystem is not None:
            ids.validate("subsystem", subsystem, "--as")
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    data = data_dir or MeshPaths(home).gateway(code)  # where `lienthong up` keeps it
    if subsystem is not None and key_file is None:
        raise click.UsageError("--as needs the subsystem's client --key")
    path = key_file or data / KEY_FILE
    try:
        key = keys.load_private(path)
    except (OSError, ValueError) as exc:
        raise click.UsageError(f"cannot read the signing key {path}: {exc}; pass --key or --data-dir") from exc
    kid = kid or keys.public_jwk(key)["kid"]
    if subsystem is not None:
        lifetime = min(minutes * 60, MAX_CLIENT_TOKEN_LIFETIME)
        token = mint_member_token(key, kid, subsystem, code, lifetime=lifetime)
    else:
        lifetime = minutes * 60
        token = mint_operator_token(key, kid, code, lifetime=lifetime)
    base = url or _written_url(data)
    dashboard = f"{base.rstrip('/')}/ops/v1/dashboard#token={token}" if base else None
    expires = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + lifetime))
    if as_json:
        click.echo(orjson.dumps({"token": token, "dashboard": dashboard, "expires_at": expires}).decode())
        return
    click.echo(f"token (until {expires}):\n{token}\n")
    if dashboard:
        click.echo(f"dashboard (the link works until then; open it, do not share it):\n{dashboard}")
    else:
        click.echo(f"no {OPS_URL_FILE} in {data}: pass --url to get a dashboard link", err=True)


def _written_url(data: Path) -> str | None:
    try:
        return (data / OPS_URL_FILE).read_text().strip() or None
    except OSError:
        return None


@ops_group.command("keygen")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Where to write the operator key (PEM); the public JWK goes next to it (.jwk).")  # fmt: skip
def keygen(out: Path) -> None:
    """Make an operator key pair; give the .jwk to `gateway serve --ops-operator-key`."""
    key = keys.generate()
    keys.save_private(key, out)
    jwk = keys.public_jwk(key)
    out.with_suffix(".jwk").write_bytes(orjson.dumps(jwk, option=orjson.OPT_INDENT_2))
    click.echo(orjson.dumps(jwk).decode())


def register(group: click.Group) -> None:
    group.add_command(ops_group)
