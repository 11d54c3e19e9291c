"""`lienthong data generate` as a user runs it: a real subprocess of the installed command."""

from __future__ import annotations

import subprocess

import sqlalchemy as sa

from tests.procs import lienthong


def _run(*args: str, cwd=None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(lienthong("data", "generate", *args), capture_output=True, text=True, timeout=120, cwd=cwd)


def test_help_names_every_option():
    done = _run("--help")
    assert done.returncode == 0
    for option in ("--people", "--seed", "--out", "--postgres", "--database-url-population", "--quiet"):
        assert option in done.stdout
    assert "same seed" in done.stdout


def test_small_run_writes_four_databases_and_reports_rate(tmp_path):
    done = _run("--people", "400", "--seed", "5", "--out", str(tmp_path / "data"))
    assert done.returncode == 0, done.stderr
    assert "rows/s" in done.stdout and "400 people" in done.stdout
    assert "generating" in done.stderr  # the progress bar
    for name in ("population", "business", "insurance", "civil_status"):
        assert (tmp_path / "data" / f"{name}.sqlite").exists()
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'data' / 'population.sqlite'}")
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM persons").scalar() == 400
    engine.dispose()


def test_default_out_folder_is_var_data(tmp_path):
    done = _run("--people", "50", "--quiet", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "var" / "data" / "population.sqlite").exists()
    assert "generating" not in done.stderr


def test_bad_arguments_exit_non_zero_with_a_clear_message(tmp_path):
    for args, words in (
        (("--people", "0"), "--people"),
        (("--people", "many"), "--people"),
        (("--seed", "-3"), "--seed"),
        (("--postgres", "mysql://x/y"), "--postgres"),
        (("--database-url-business", "mysql://x/y"), "database_urls[business]"),
    ):
        done = _run(*args, "--out", str(tmp_path))
        assert done.returncode == 2, args
        assert words in done.stderr and "Traceback" not in done.stderr


def test_unreachable_database_is_a_clear_error(tmp_path):
    done = _run("--people", "10", "--quiet", "--out", str(tmp_path),
                "--database-url-insurance", "postgresql+psycopg://postgres@127.0.0.1:1/none")  # fmt: skip
    assert done.returncode == 1
    assert "cannot use a database" in done.stderr and "Traceback" not in done.stderr
