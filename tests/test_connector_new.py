"""`lienthong connector new`: the package it writes is complete and clean, bad arguments are refused with the reason,
and the connector it makes runs on a real mesh: installed with pip into a folder of its own (never the shared venv),
registered, approved and granted with the `lienthong` command alone, served, and called through two gateways."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path, PurePosixPath

import pytest
from click.testing import CliRunner

from connectors import scaffold
from tests.procs import lienthong

REPO = Path(__file__).resolve().parent.parent
ARGS = ["--member", "VN/PROV/HANOI", "--subsystem", "land"]


def new(*args: str) -> tuple[int, str]:
    """The command in-process: argument checks need no process start each."""
    result = CliRunner().invoke(scaffold.new, list(args))
    return result.exit_code, result.output


@pytest.mark.parametrize(
    ("name", "reason"),
    [("Land", "lowercase"), ("1land", "starting with a letter"), ("land_parcels", "single '-'"),
     ("land--x", "single '-'"), ("x" * 41, "at most 40"), ("population", "already a Python module"),
     ("json", "already a Python module"), ("class", "already a Python module")],
)  # fmt: skip
def test_a_bad_name_is_refused_with_the_reason(tmp_path: Path, name: str, reason: str) -> None:
    code, out = new(name, *ARGS, "--dir", str(tmp_path / "pkg"))
    assert code == 2 and f"connector name {name!r}" in out and reason in out, out
    assert not (tmp_path / "pkg").exists()


def test_bad_identifiers_name_the_option(tmp_path: Path) -> None:
    code, out = new("hanoi-land", "--member", "VN/CITY/HANOI", "--subsystem", "land", "--dir", str(tmp_path / "a"))
    assert code == 2 and "--member VN/CITY/HANOI" in out, out
    code, out = new("hanoi-land", "--member", "VN/PROV/HANOI", "--subsystem", "VN/PROV/DANANG/land")
    assert code == 2 and "not under --member VN/PROV/HANOI" in out, out
    code, out = new("hanoi-land", *ARGS, "--gateway", "Ha Noi", "--dir", str(tmp_path / "b"))
    assert code == 2 and "--gateway" in out and "lowercase" in out, out
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_an_existing_folder_is_not_overwritten(tmp_path: Path) -> None:
    target = tmp_path / "hanoi-land"
    target.mkdir()
    (target / "mine.txt").write_text("keep")
    code, out = new("hanoi-land", *ARGS, "--dir", str(target))
    assert code == 2 and "already exists" in out and "refusing to overwrite" in out, out
    assert [p.name for p in target.iterdir()] == ["mine.txt"] and (target / "mine.txt").read_text() == "keep"


def test_the_package_is_complete_and_passes_lienthongs_checks(tmp_path: Path) -> None:
    target = tmp_path / "hanoi-land"
    code, out = new("hanoi-land", *ARGS, "--dir", str(target))
    assert code == 0, out
    made = sorted(str(p.relative_to(target)) for p in target.rglob("*") if p.is_file())
    assert made == ["README.md", "hanoi_land/__init__.py", "hanoi_land/connector.py", "hanoi_land/openapi.yaml",
                    "hanoi_land/schema.py", "hanoi_land/seed.py", "pyproject.toml", "tests/conftest.py",
                    "tests/test_hanoi_land.py"]  # fmt: skip
    for rel in made:
        assert "{{" not in (target / rel).read_text(), f"{rel} keeps a template placeholder"
    project = tomllib.loads((target / "pyproject.toml").read_text())
    entry_points = project["project"]["entry-points"]["lienthong.connectors"]
    assert entry_points == {"hanoi-land": "hanoi_land.connector:CONNECTOR"}
    assert project["tool"]["setuptools"]["package-data"] == {"hanoi_land": ["openapi.yaml"]}
    readme = (target / "README.md").read_text()
    for step in ("lienthong subsystems add VN/PROV/HANOI/land", "lienthong keygen --subsystem VN/PROV/HANOI/land",
                 "lienthong services approve VN/PROV/HANOI/land/hanoi-land",
                 "lienthong grants add", "lienthong connector cert hanoi-land", "python -m hanoi_land.seed",
                 "lienthong connector serve hanoi-land --gateway hanoi"):  # fmt: skip
        assert step in readme, step
    config = str(REPO / "pyproject.toml")
    for check in (["ruff", "check", "--no-cache", "--config", config, "."],
                  ["ruff", "format", "--no-cache", "--config", config, "--check", "."]):  # fmt: skip
        done = subprocess.run([str(Path(sys.executable).with_name(check[0])), *check[1:]], cwd=target,
                              capture_output=True, text=True, timeout=60)  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
    # the SDK's own start-up check: the document is valid and every operationId has its handler and back
    probe = "from connectors.sdk.validation import check_connector; import hanoi_land.connector as c; " \
            "check_connector(c.CONNECTOR); print(c.CONNECTOR.service_id)"  # fmt: skip
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": f"{target}{os.pathsep}{REPO}"})  # fmt: skip
    assert done.returncode == 0 and done.stdout.strip() == "VN/PROV/HANOI/land/hanoi-land", done.stderr


def test_the_templates_are_package_data() -> None:
    """A wheel of lienthong holds the templates only if pyproject's package-data for `connectors` names each (as
    setuptools globs them: relative to the package folder, `*` within one folder)."""
    patterns = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    globs = [*patterns.get("connectors", []), *patterns.get("*", [])]
    for rel, _ in scaffold.templates():
        path = f"{scaffold.TEMPLATE_DIR}/{rel}.tmpl"
        assert any(PurePosixPath(path).match(g) for g in globs), f"pyproject.toml's package-data leaves out {path}"


def _missing_commands() -> str | None:
    """Why the end-to-end test cannot run yet: a command it needs is not in this tree (checked in-process)."""
    from lienthong.cli import main

    for argv, wanted in ((["subsystems", "add", "--help"], "Usage"), (["connector", "new", "--help"], "Usage"),
                         (["connector", "serve", "--help"], "--module")):  # fmt: skip
        done = CliRunner().invoke(main, argv)
        if done.exit_code != 0 or wanted not in done.output:
            return f"`lienthong {' '.join(argv[:-1])}` is not there yet (issue 16, landing from another part)"
    return None


def test_a_new_connector_serves_through_two_gateways(tmp_path: Path) -> None:
    """The Done-when of issue 16. The package's own test (tests/conftest.py of the package) starts Redis, a registry
    and two gateways and registers, approves and grants the connector with `lienthong` commands only; its call goes
    to the consumer's home gateway, which relays it to the hosting gateway, which calls the connector."""
    why = _missing_commands()
    if why is not None:
        pytest.skip(why)
    target = tmp_path / "hanoi-land"
    made = subprocess.run(lienthong("connector", "new", "hanoi-land", *ARGS, "--dir", str(target)),
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert made.returncode == 0, made.stderr
    site = tmp_path / "site"
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site),
                          str(target)], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert pip.returncode == 0, pip.stderr
    env = {**os.environ, "PYTHONPATH": str(site)}
    # `connector list` finds it through the entry point (run beside the package's test: each starts a Python)
    listing = subprocess.Popen(lienthong("connector", "list"), stdout=subprocess.PIPE, text=True, env=env)
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--basetemp",
                          str(tmp_path / "pkgtest"), "tests"], cwd=target, capture_output=True, text=True,
                         timeout=180, env=env)  # fmt: skip
    listed, _ = listing.communicate(timeout=60)
    assert "hanoi-land" in listed and "hanoi_land.connector:CONNECTOR" in listed, listed
    assert run.returncode == 0 and "2 passed" in run.stdout, run.stdout[-6000:] + run.stderr[-2000:]
