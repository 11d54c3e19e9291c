"""The top of the house: the `lienthong` command (one entry point; each part of the mesh adds its own commands),
`up` and `demo` (the whole mesh on one machine), its supervisor, and the commands that span parts (`cert`, `ops`).
It stands on the parts (registry, gateway, policies, connectors) and the kernel; nothing below imports it."""

from __future__ import annotations

import importlib

import click

from lienthong import __version__

# Each module exposes register(group); the order is the order of `lienthong --help`.
COMMAND_MODULES = (
    "registry.cli",
    "connectors.cli",
    "connectors.data_cli",
    "gateway.cli",
    "lienthong.cli.cert_cli",  # after gateway.cli and connectors.cli: it adds `cert` to their groups
    "lienthong.cli.ops_cli",
    "policies.cli",
    "lienthong.cli.demo_cli",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="lienthong")
def main() -> None:
    """lienthong: the government data integration and sharing mesh.

    A shared service registry, one gateway per national or provincial identity, a policy chain and
    connectors for the national databases. Run `lienthong COMMAND --help` for each command.
    """


for _name in COMMAND_MODULES:
    importlib.import_module(_name).register(main)
