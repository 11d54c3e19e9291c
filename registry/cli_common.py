"""What every admin command shares: which mesh home, registry, key and CA it uses (`api_options`, `client`), how a
refusal is printed (naming the key file and the URL), and how lists print (`--json`, or a table within 80 columns).

The mesh home (`--home`, env LIENTHONG_HOME, default ./var) is lienthong.home.MeshPaths: the admin key, the
mesh CA and the registry's public key are in <home>/registry, and <home>/registry/url names the registry when
neither --registry nor LIENTHONG_REGISTRY_URL does.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import click

from lienthong.home import MeshPaths, home_option
from registry import keyfiles

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_REGISTRY = "https://127.0.0.1:8600"
CA_FILE = "ca.crt"  # registry.mesh_ca.CA_CERT, named here so --help does not import the PKI
URL_FILE = "url"  # <home>/registry/url: the registry's base URL, for a mesh whose registry is not on the default
WIDTH = 80  # tables fit a default terminal


def home_registry_dir(home: Path) -> Path:
    return MeshPaths(home).registry


def api_options(fn: F) -> F:
    """--home, --registry, --key, --kid, --as and --registry-ca: who talks to which registry."""
    opts = [
        home_option("the mesh's folder: its admin key, CA and registry URL are under <home>/registry"),
        click.option("--registry", "registry_url", envvar="LIENTHONG_REGISTRY_URL", default=None,
                     help=f"registry base URL (env LIENTHONG_REGISTRY_URL) [default: <home>/registry/{URL_FILE}, "
                          f"else {DEFAULT_REGISTRY}]"),
        click.option("--key", "auth_key", type=click.Path(dir_okay=False, path_type=Path), default=None,
                     help=f"private key (PEM) to sign with [default: <home>/registry/{keyfiles.ADMIN_KEY}]"),
        click.option("--kid", default=None, help="key id registered for --key [default: its thumbprint]"),
        click.option("--as", "issuer", default="admin", show_default=True,
                     help="token issuer: 'admin', a subsystem id (integrator) or gateway:CODE"),
        click.option("--registry-ca", type=click.Path(dir_okay=False, path_type=Path), default=None,
                     envvar="LIENTHONG_REGISTRY_CA",
                     help=f"the mesh CA certificate an https registry is verified with [default: <home>/registry/"
                          f"{CA_FILE}]"),
    ]  # fmt: skip
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def registry_url_of(home: Path, given: str | None) -> str:
    """--registry / LIENTHONG_REGISTRY_URL, else the URL the home records, else the default."""
    if given:
        return given
    recorded = home_registry_dir(home) / URL_FILE
    if recorded.is_file() and recorded.read_text().strip():
        return recorded.read_text().strip()
    return DEFAULT_REGISTRY


def registry_ca_file(registry_url: str, given: Path | None, default: Path) -> Path | None:
    """The mesh CA file an https registry is verified with (None for http); a missing one names itself."""
    if not registry_url.lower().startswith("https:"):
        return None
    path = given or default
    if not path.is_file():
        raise click.ClickException(f"no mesh CA certificate at {path} to verify {registry_url} with; pass "
                                   "--registry-ca (the registry's ca.crt) or --home")  # fmt: skip
    return path


@dataclass
class Session:
    """One admin command's registry client and what it used, so every error can name them."""

    api: Any  # registry.client.RegistryClient, imported late
    url: str
    key: Path
    home: Path

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.api.close()

    def run(self, call: Callable[[Any], Any], hints: dict[int, str] | None = None) -> Any:
        """Run one API call; a refusal prints the problem, the URL and the key file (and the hint for its status),
        and exits 1."""
        from registry.client import RegistryError

        try:
            return call(self.api)
        except RegistryError as exc:
            click.echo(f"error: {exc}\n  registry: {self.url}\n  signed with: {self.key} (kid {self.api.kid}, "
                       f"as {self.api.iss})", err=True)  # fmt: skip
            hint = (hints or {}).get(exc.status)
            if hint:
                click.echo(f"  hint: {hint}", err=True)
            raise SystemExit(1) from exc


def session(
    home: Path, registry_url: str | None, auth_key: Path | None, kid: str | None, issuer: str,
    registry_ca: Path | None = None,
) -> Session:  # fmt: skip
    from registry.client import RegistryClient

    url = registry_url_of(home, registry_url)
    reg_dir = home_registry_dir(home)
    path = auth_key or reg_dir / keyfiles.ADMIN_KEY
    if not path.exists():
        raise click.ClickException(f"no key file {path} to sign calls to {url} with; pass --key or --home, or run "
                                   f"`lienthong registry init --data-dir {reg_dir}`")  # fmt: skip
    if kid is None and auth_key is None and (path.parent / keyfiles.ADMIN_PUB).exists():
        kid = keyfiles.admin_kid(path.parent)
    ca = registry_ca_file(url, registry_ca, reg_dir / CA_FILE)
    try:
        return Session(RegistryClient(url, path, kid, issuer, ca=ca), url, path, home)
    except ValueError as exc:
        raise click.ClickException(f"{path} (for {url}): {exc}") from exc


def echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, ensure_ascii=False))


def print_table(rows: Sequence[dict[str, Any]], columns: Sequence[str], title: str) -> None:
    """A plain table within WIDTH columns: long cells are cut (marked …), the first column last of all."""
    cells = [[_cell(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c), *(len(row[i]) for row in cells)]) for i, c in enumerate(columns)]
    room = WIDTH - 2 * (len(columns) - 1)
    while sum(widths) > room:  # shrink the widest column but the first (an id the reader copies) one step at a time
        widest = max(range(1, len(widths)), key=lambda i: widths[i]) if len(widths) > 1 else 0
        if widths[widest] <= 4:
            widest = 0
        widths[widest] -= 1
    click.echo(title)
    for row in [list(columns), ["-" * w for w in widths], *cells]:
        click.echo("  ".join(_fit(v, w) for v, w in zip(row, widths, strict=True)).rstrip())


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list | tuple):
        return ",".join(_cell(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return str(value)


def _fit(value: str, width: int) -> str:
    return value.ljust(width) if len(value) <= width else value[: max(width - 1, 0)] + "…"


def show(items: Iterable[dict[str, Any]], as_json: bool, columns: Sequence[str], noun: str) -> None:
    """A list command's output: the API's objects as JSON, or a table."""
    listed = list(items)
    if as_json:
        echo_json(listed)
        return
    print_table(listed, columns, f"{len(listed)} {noun}")
