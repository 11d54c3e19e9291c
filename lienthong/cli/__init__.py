"""The top of the house: the `lienthong` command (one entry point; each part of the mesh adds its own commands),
`up` and `demo` (the whole mesh on one machine), its supervisor, and the commands that span parts (`cert`, `ops`).
It stands on the parts (registry, gateway, policies, connectors) and the kernel; nothing below imports it.

A command module is imported only when one of its commands runs: all of them together import connexion, SQLAlchemy
and Redis (over a second of start-up), which `lienthong gateway serve` or `lienthong grants add` never needs. Help,
and any other look at `main.commands`, loads them all."""

from __future__ import annotations

import importlib
from typing import Any

import click

from lienthong import __version__

# Each module exposes register(group) and adds the top-level commands named here; the order is the order of
# registration. A name missing here still works (every module is loaded to find it), only slower.
COMMAND_MODULES: dict[str, tuple[str, ...]] = {
    "registry.cli": ("registry", "members", "subsystems", "gateways", "services", "keys", "clients", "grants",
                     "purposes", "snapshot", "catalog"),
    "connectors.cli": ("connector",),
    "connectors.data_cli": ("data",),
    "gateway.cli": ("gateway", "keygen", "call"),
    # after gateway.cli and connectors.cli: it adds `cert` to their groups, and the `client` group
    "lienthong.cli.cert_cli": ("gateway", "connector", "client"),
    "lienthong.cli.ops_cli": ("ops",),
    "policies.cli": ("audit", "metering"),
    "lienthong.cli.demo_cli": ("up", "demo"),
}  # fmt: skip


class LazyGroup(click.Group):
    """A group whose command modules are imported when a command of theirs is looked up (get_command); reading
    `commands` (help, listing, a test walking the tree) loads every module first, so it is always whole."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._loaded: set[str] = set()
        self._registering = False
        super().__init__(*args, **kwargs)

    @property  # type: ignore[override]
    def commands(self) -> dict[str, click.Command]:
        if not self._registering and len(self._loaded) < len(COMMAND_MODULES):
            self._load(list(COMMAND_MODULES))
        return self._commands

    @commands.setter
    def commands(self, value: dict[str, click.Command]) -> None:
        self._commands = value

    def _load(self, modules: list[str]) -> None:
        """Register `modules` (in the table's order). A module after one of them in the table that adds to the same
        commands and has run already (cert_cli, after `lienthong client`) runs again, as it would have after it."""
        order = list(COMMAND_MODULES)
        self._registering = True  # register() reads and adds to `commands`: no recursion into a full load
        try:
            for name in modules:
                if name in self._loaded:
                    continue
                self._loaded.add(name)
                importlib.import_module(name).register(self)
                for later in order[order.index(name) + 1 :]:
                    if later in self._loaded and set(COMMAND_MODULES[later]) & set(COMMAND_MODULES[name]):
                        importlib.import_module(later).register(self)
        finally:
            self._registering = False

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        modules = [m for m, names in COMMAND_MODULES.items() if cmd_name in names]
        self._load(modules or list(COMMAND_MODULES))
        return self._commands.get(cmd_name)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="lienthong")
def main() -> None:
    """lienthong: the government data integration and sharing mesh.

    A shared service registry, one gateway per national or provincial identity, a policy chain and
    connectors for the national databases. Run `lienthong COMMAND --help` for each command.
    """
