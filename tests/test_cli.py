"""The `lienthong` command as a whole: every command and group has help text, and usage errors exit 2."""

from __future__ import annotations

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
              ("gateway", "serve"), ("connector", "serve"), ("grants", "revoke"), ("snapshot", "show")}  # fmt: skip
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


def test_an_unknown_option_is_a_usage_error() -> None:
    result = CliRunner().invoke(main, ["demo", "--no-such-option"])
    assert result.exit_code == 2 and "No such option" in result.output
