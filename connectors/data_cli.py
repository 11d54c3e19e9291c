"""`lienthong data generate`: build the population, business, insurance and civil status databases (tests, demos)."""

from __future__ import annotations

from pathlib import Path

import click
import sqlalchemy.exc

DB_OPTIONS = {
    "population": "database_url_population",
    "business": "database_url_business",
    "insurance": "database_url_insurance",
    "civil_status": "database_url_civil_status",
}


@click.group("data")
def data() -> None:
    """Synthetic national databases: consistent, valid and deterministic by seed."""


@data.command("generate")
@click.option("--people", type=click.IntRange(min=1), default=100_000, show_default=True,
              help="How many persons to create; households, enterprises (~1 per 100), insurance (~90%) and birth "
                   "registrations follow from them.")  # fmt: skip
@click.option("--seed", type=click.IntRange(min=0), default=1, show_default=True,
              help="Random seed: the same seed gives byte-identical rows.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("var/data"),
              show_default=True, help="Folder for the SQLite files (population.sqlite, business.sqlite, "
              "insurance.sqlite, civil_status.sqlite) of databases given no URL. Existing files are replaced.")
@click.option("--postgres", metavar="URL", default=None,
              help="Put every database in PostgreSQL instead, one schema each (population, business, insurance, "
                   "civil_status), e.g. postgresql+psycopg://postgres@127.0.0.1:5432/lienthong.")  # fmt: skip
@click.option("--database-url-population", metavar="URL", envvar="LIENTHONG_DATABASE_URL_POPULATION",
              help="SQLAlchemy URL of the population database (env LIENTHONG_DATABASE_URL_POPULATION).")
@click.option("--database-url-business", metavar="URL", envvar="LIENTHONG_DATABASE_URL_BUSINESS",
              help="SQLAlchemy URL of the business registry database (env LIENTHONG_DATABASE_URL_BUSINESS).")
@click.option("--database-url-insurance", metavar="URL", envvar="LIENTHONG_DATABASE_URL_INSURANCE",
              help="SQLAlchemy URL of the insurance database (env LIENTHONG_DATABASE_URL_INSURANCE).")
@click.option("--database-url-civil-status", metavar="URL", envvar="LIENTHONG_DATABASE_URL_CIVIL_STATUS",
              help="SQLAlchemy URL of the civil status database (env LIENTHONG_DATABASE_URL_CIVIL_STATUS).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def generate_command(
    people: int, seed: int, out_dir: Path, postgres: str | None, quiet: bool, **urls: str | None
) -> None:
    """Generate the four national databases, consistent with each other.

    Every personal ID, enterprise code, social insurance number and card code is valid, and every reference
    resolves (household heads, parents, spouses, legal representatives, owners, insured people, cards, births).
    Data are seen as of 2025-07-01 whatever day it runs. Prints the rows per second at the end.
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from connectors.datagen import GenerateError, generate, postgres_urls

    try:
        database_urls = postgres_urls(postgres) if postgres else {}
    except GenerateError as exc:
        raise click.BadParameter(str(exc).removeprefix("postgres: "), param_hint="--postgres") from None
    except sqlalchemy.exc.ArgumentError:
        raise click.BadParameter("not a database URL", param_hint="--postgres") from None
    for name, option in DB_OPTIONS.items():
        if urls.get(option):
            database_urls[name] = str(urls[option])
    console = Console(stderr=True)
    bar = Progress(TextColumn("[bold]generating"), BarColumn(), MofNCompleteColumn(), TextColumn("people"),
                   TimeElapsedColumn(), console=console, disable=quiet)  # fmt: skip
    try:
        with bar:
            task = bar.add_task("people", total=people)
            result = generate(out_dir, database_urls=database_urls, people=people, seed=seed,
                              progress=lambda done, _total: bar.update(task, completed=done))  # fmt: skip
    except GenerateError as exc:
        raise click.UsageError(str(exc)) from None
    except sqlalchemy.exc.ArgumentError as exc:
        raise click.UsageError(f"a database URL is not valid: {exc}") from None
    except sqlalchemy.exc.OperationalError as exc:
        raise click.ClickException(f"cannot use a database: {exc.orig or exc}") from None
    except RuntimeError as exc:  # the generating child process failed; its error is in the message
        raise click.ClickException(str(exc)) from None
    for name, url in result.urls.items():
        shown = sqlalchemy.make_url(url).render_as_string(hide_password=True)
        click.echo(f"{name:<13} {shown}")
    rows = ", ".join(f"{key.split('.')[1]} {count:,}" for key, count in result.rows.items())
    click.echo(f"rows          {rows}")
    click.echo(f"generated {result.total_rows:,} rows for {people:,} people in {result.seconds:.1f} s "
               f"({result.rows_per_second:,.0f} rows/s)")  # fmt: skip


def register(group: click.Group) -> None:
    """Add the `data` group to the top-level command."""
    group.add_command(data)
