"""The `lienthong` command as a whole: every command and group has help text, and usage errors exit 2; `lienthong
call` authenticates by the client certificate by default and says how to get one when it is missing (issue 14)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from lienthong.cli import main


def _walk(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found: list[tuple[str, ...]] = []
    for name, command in sorted(group.commands.items()):
        path = (*prefix, name)
        found.append(path)
        if isinstance(command, click.Group):
            found.extend(_walk(command, path))
    return found


COMMANDS = _walk(main)


def test_the_command_tree_holds_what_the_issues_promise() -> None:
    wanted = {("keygen",), ("call",), ("catalog", "search"), ("metering", "report"), ("audit", "verify"),
              ("data", "generate"), ("up",), ("demo",), ("registry", "init"), ("registry", "serve"),
              ("gateway", "serve"), ("connector", "serve"), ("grants", "revoke"), ("snapshot", "show"),
              ("gateway", "cert"), ("connector", "cert"), ("client", "cert")}  # fmt: skip
    assert wanted <= set(COMMANDS)


@pytest.mark.parametrize("path", COMMANDS, ids=" ".join)
def test_every_command_has_help_text(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(main, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output
    command: click.Command = main
    for name in path:
        assert isinstance(command, click.Group)
        command = command.commands[name]
    assert (command.help or "").strip(), f"`lienthong {' '.join(path)}` has no help text"


# Run in a fresh interpreter: an admin command's modules, then every module into an empty group, noting the top-level
# commands each adds or adds to (cert_cli adds `cert` to the gateway's and connector's groups, which are shared).
LAZY_PROBE = """
import importlib, json, sys, click
from lienthong.cli import COMMAND_MODULES, main
main(["grants", "add", "--help"], standalone_mode=False)
heavy = sorted(m for m in ("connexion", "sqlalchemy", "redis") if m in sys.modules)
group, added = click.Group(), {}
for module in COMMAND_MODULES:
    before = {n: set(getattr(c, "commands", ())) for n, c in group.commands.items()}
    importlib.import_module(module).register(group)
    added[module] = sorted(n for n, c in group.commands.items() if before.get(n) != set(getattr(c, "commands", ())))
print(json.dumps({"heavy": heavy, "added": added}))
"""


def test_a_command_imports_only_the_modules_the_lazy_table_names() -> None:
    """`lienthong grants add` starts without connexion, SQLAlchemy and Redis (a second of start-up together), and
    COMMAND_MODULES says which top-level commands each module adds, as `lienthong X` imports only X's modules."""
    from lienthong.cli import COMMAND_MODULES

    # and in any order: `client` first (cert_cli alone), then `gateway cert` is there all the same
    late = ("from lienthong.cli import main\nfor argv in (['client', '--help'], ['gateway', 'cert', '--help']):\n"
            "    main(argv, standalone_mode=False)")  # fmt: skip
    probes = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
              for code in (LAZY_PROBE, late)]  # fmt: skip
    (out, err), (_, late_err) = (p.communicate(timeout=60) for p in probes)
    assert probes[0].returncode == 0, err
    assert probes[1].returncode == 0, late_err
    seen = json.loads(out.splitlines()[-1])
    assert seen["heavy"] == [], seen
    assert seen["added"] == {module: sorted(names) for module, names in COMMAND_MODULES.items()}


def test_an_unknown_option_is_a_usage_error() -> None:
    result = CliRunner().invoke(main, ["demo", "--no-such-option"])
    assert result.exit_code == 2 and "No such option" in result.output


CALL = ["call", "--as", "VN/PROV/HANOI/public-services", "--purpose", "identity-verification",
        "VN/GOV/BCA/population/persons/persons/001033934380"]  # fmt: skip


def test_call_uses_the_client_certificate_by_default_and_names_the_command_that_makes_it(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, [*CALL, "--home", str(tmp_path), "--gateway", "https://127.0.0.1:9"])
    assert result.exit_code == 2, result.output
    wanted = tmp_path / "clients" / "VN_PROV_HANOI_public-services" / "tls"
    assert "no client certificate for VN/PROV/HANOI/public-services" in result.output
    assert "lienthong client cert --subsystem VN/PROV/HANOI/public-services" in result.output
    assert str(wanted) in result.output and "--key FILE" in result.output


def test_call_by_certificate_refuses_a_plain_http_gateway(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, [*CALL, "--home", str(tmp_path), "--gateway", "http://127.0.0.1:9"])
    assert result.exit_code == 2 and "https://" in result.output and "--key" in result.output, result.output


def test_call_over_https_needs_the_mesh_ca(tmp_path: Path) -> None:
    from lienthong import keys

    key = tmp_path / "client.key"
    keys.save_private(keys.generate(), key)
    args = [*CALL, "--home", str(tmp_path), "--gateway", "https://127.0.0.1:9", "--key", str(key)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2 and "no mesh CA certificate" in result.output and "--ca" in result.output


def test_a_client_without_a_key_sends_no_token() -> None:
    """X-Road's way: the certificate is the credential, so no Authorization header goes with the call."""
    from lienthong import keys
    from lienthong.mesh_client import MeshClient

    by_certificate = MeshClient("https://127.0.0.1:9", "hanoi", "VN/PROV/HANOI/public-services")
    headers = by_certificate.headers("identity-verification")
    assert "Authorization" not in headers and headers["X-Road-Client"] == "VN/PROV/HANOI/public-services"
    by_token = MeshClient("https://127.0.0.1:9", "hanoi", "VN/PROV/HANOI/public-services", keys.generate())
    assert by_token.headers("identity-verification")["Authorization"].startswith("Bearer ")
    by_certificate.close()
    by_token.close()
