"""`lienthong connector new NAME --member VN/PROV/... --subsystem CODE`: a connector package to start from.

It writes, from the templates in connectors/scaffold_template (package data, read with importlib.resources so that
an editable install and a wheel both find them): pyproject.toml with the `lienthong.connectors` entry point, the
module with its ConnectorDefinition and handler, its OpenAPI document, the tables, a seed-data hook, a test that
starts a registry and two gateways with the `lienthong` command and calls the connector through them, and a README
listing the commands to run next. Template files end in `.tmpl` (so ruff and mypy skip them), `__pkg__` in a path
is the Python package name, and `{{key}}` in a file is replaced by the value of that key."""

from __future__ import annotations

import keyword
import re
import sys
from dataclasses import dataclass
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path

import click

from lienthong import ids

# A connector name is a CLI name and, with '-' as '_', a Python package: lowercase, starting with a letter.
_NAME = re.compile(r"^[a-z][a-z0-9]*(?:-[a-z0-9]+)*$")
_MAX_NAME = 40
# lienthong's own connectors and packages: a new package of that name would shadow them
_TAKEN = {"population", "business-registry", "insurance", "civil-status", "connectors", "lienthong", "registry",
          "gateway", "policies", "tests", "bench"}  # fmt: skip
_PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")
TEMPLATE_DIR = "scaffold_template"


class ScaffoldError(ValueError):
    """A bad argument or an existing folder; the message says which and what to do."""


def check_name(name: str) -> str:
    """NAME if it can be a connector's name and its Python package's, else ScaffoldError saying why."""
    if not _NAME.match(name) or len(name) > _MAX_NAME:
        raise ScaffoldError(f"connector name {name!r}: use lowercase letters, digits and single '-' between them, "
                            f"starting with a letter, at most {_MAX_NAME} characters (e.g. land-parcels)")  # fmt: skip
    package = name.replace("-", "_")
    if name in _TAKEN or package in _TAKEN or keyword.iskeyword(package) or package in sys.stdlib_module_names:
        raise ScaffoldError(f"connector name {name!r}: {package!r} is already a Python module lienthong or Python "
                            "uses; pick a name that says whose data it is (e.g. hanoi-land)")  # fmt: skip
    return name


@dataclass(frozen=True)
class Scaffold:
    """What one new connector is called and whose it is."""

    name: str
    member: str  # VN/CLASS/MEMBER
    subsystem: str  # the subsystem code under the member
    service: str  # the service code under the subsystem
    gateway: str  # the hosting gateway's code

    @classmethod
    def of(cls, name: str, member: str, subsystem: str, service: str | None, gateway: str | None) -> Scaffold:
        """Validate every part; a full subsystem id is accepted for --subsystem if it is under --member."""
        check_name(name)
        try:
            ids.validate("member", member, "--member")
            if "/" in subsystem:
                if not subsystem.startswith(member + "/"):
                    raise ScaffoldError(f"--subsystem {subsystem} is not under --member {member}")
                subsystem = subsystem.removeprefix(member + "/")
            ids.validate("subsystem", f"{member}/{subsystem}", "--subsystem")
            service = service or name
            ids.validate("service", f"{member}/{subsystem}/{service}", "--service")
            gateway = gateway or _default_gateway(member)
            ids.validate("gateway", gateway, "--gateway")
        except ids.InvalidIdentifier as exc:
            raise ScaffoldError(f"{exc.field} {exc.value}: {exc.reason}") from None
        return cls(name, member, subsystem, service, gateway)

    @property
    def package(self) -> str:
        return self.name.replace("-", "_")

    @property
    def subsystem_id(self) -> str:
        return f"{self.member}/{self.subsystem}"

    @property
    def service_id(self) -> str:
        return f"{self.subsystem_id}/{self.service}"

    def values(self) -> dict[str, str]:
        other = "consumer-test" if self.gateway != "consumer-test" else "consumer-test2"
        return {
            "name": self.name, "package": self.package, "member": self.member, "subsystem": self.subsystem,
            "subsystem_id": self.subsystem_id, "service_id": self.service_id, "gateway": self.gateway,
            "title": f"{self.member.rsplit('/', 1)[1].title()} {self.name.replace('-', ' ')}",
            "other_gateway": other, "other_member": "VN/GOV/" + other.upper().replace("-", ""),
        }  # fmt: skip


def _default_gateway(member: str) -> str:
    """A province's gateway is named after it (VN/PROV/HANOI -> hanoi), a ministry's is the national one."""
    cls, code = member.split("/")[1:3]
    return code.lower() if cls == "PROV" else "national"


def render(text: str, values: dict[str, str], source: str) -> str:
    def one(match: re.Match[str]) -> str:
        try:
            return values[match.group(1)]
        except KeyError:
            raise ScaffoldError(f"template {source} uses {{{{{match.group(1)}}}}}, which has no value") from None

    return _PLACEHOLDER.sub(one, text)


def templates(root: Traversable | None = None, prefix: str = "") -> list[tuple[str, Traversable]]:
    """(relative path, file) of every template, `.tmpl` files only (nothing else a build may leave there)."""
    root = root if root is not None else files("connectors") / TEMPLATE_DIR
    found: list[tuple[str, Traversable]] = []
    for entry in sorted(root.iterdir(), key=lambda e: e.name):
        if entry.is_dir():
            if entry.name != "__pycache__":
                found += templates(entry, f"{prefix}{entry.name}/")
        elif entry.name.endswith(".tmpl"):
            found.append((prefix + entry.name.removesuffix(".tmpl"), entry))
    if root.name == TEMPLATE_DIR and not found:
        raise ScaffoldError(f"no templates in {root}: lienthong's package data is missing (reinstall it)")
    return found


def create(scaffold: Scaffold, target: Path) -> list[Path]:
    """Write the package into `target`, which must not exist yet; the files written."""
    if target.exists():
        raise ScaffoldError(f"{target} already exists; refusing to overwrite it (pick another --dir or remove it)")
    values = scaffold.values()
    rendered = [(target / rel.replace("__pkg__", scaffold.package), render(t.read_text("utf-8"), values, rel))
                for rel, t in templates()]  # fmt: skip  # all rendered before anything is written
    written = []
    for path, text in rendered:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


@click.command("new")
@click.argument("name")
@click.option("--member", required=True, help="The provider member, VN/CLASS/CODE (e.g. VN/PROV/HANOI).")
@click.option("--subsystem", required=True, help="The provider subsystem's code under --member (e.g. land).")
@click.option("--service", default=None, help="The service code under the subsystem [default: NAME].")
@click.option("--gateway", default=None, help="The hosting gateway's code [default: a province's code in lowercase, "
              "else national].")  # fmt: skip
@click.option("--dir", "directory", type=click.Path(path_type=Path), default=None,
              help="The folder to create [default: ./NAME].")  # fmt: skip
def new(name: str, member: str, subsystem: str, service: str | None, gateway: str | None,
        directory: Path | None) -> None:  # fmt: skip
    """Create connector package NAME: its module, OpenAPI file, tables, seed data, a test behind two real gateways,
    and a pyproject.toml with the `lienthong.connectors` entry point. Its README says what to run next."""
    try:
        scaffold = Scaffold.of(name, member, subsystem, service, gateway)
        target = directory if directory is not None else Path(name)
        written = create(scaffold, target)
    except ScaffoldError as exc:
        raise click.UsageError(str(exc)) from None
    click.echo(f"created connector {name} (service {scaffold.service_id}, hosted by gateway {scaffold.gateway}) "
               f"in {target}: {len(written)} files")  # fmt: skip
    click.echo(f"next: cd {target} && pip install -e '.[test]' && pytest; then follow {target / 'README.md'}")


def register_new(group: click.Group) -> None:
    """Add `new` to the `lienthong connector` group (connectors/cli.py calls this)."""
    group.add_command(new)
