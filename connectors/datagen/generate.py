"""`generate()`: build the population, business, insurance and civil status databases, consistent with each other."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa

from connectors.datagen.households import COLUMNS, World
from connectors.datagen.loader import Loader
from connectors.schema import DATABASES

# The day the generated country is seen from. Fixed, so one seed gives the same rows whatever day it runs.
AS_OF = dt.date(2025, 7, 1)
BATCH_ROWS = 50_000
DATABASE_NAMES: tuple[str, ...] = tuple(DATABASES)

Progress = Callable[[int, int], None]


class GenerateError(ValueError):
    """Bad arguments to generate(); the message names the argument."""


@dataclass(slots=True)
class GenerateResult:
    people: int
    seed: int
    urls: dict[str, str]
    rows: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def total_rows(self) -> int:
        return sum(self.rows.values())

    @property
    def rows_per_second(self) -> float:
        return self.total_rows / self.seconds if self.seconds else 0.0


def sqlite_urls(out_dir: Path) -> dict[str, str]:
    """The SQLite file URL of each database under `out_dir` (`population.sqlite`, ...)."""
    return {name: f"sqlite:///{(out_dir / f'{name}.sqlite').resolve()}" for name in DATABASE_NAMES}


def postgres_urls(base_url: str) -> dict[str, str]:
    """One PostgreSQL schema per database (`population`, ...) in the database of `base_url`, via search_path."""
    url = sa.make_url(base_url)
    if url.get_backend_name() != "postgresql":
        raise GenerateError("postgres: a postgresql URL, e.g. postgresql+psycopg://user@host:5432/db")
    if url.drivername == "postgresql":
        url = url.set(drivername="postgresql+psycopg")
    return {
        name: url.update_query_dict({"options": f"-csearch_path={name}"}).render_as_string(hide_password=False)
        for name in DATABASE_NAMES
    }


def resolve_urls(out_dir: Path | None, database_urls: Mapping[str, str] | None) -> dict[str, str]:
    """Every database's URL: the ones given, the rest as SQLite files in `out_dir`."""
    given = dict(database_urls or {})
    unknown = set(given) - set(DATABASE_NAMES)
    if unknown:
        raise GenerateError(f"database_urls: unknown database {sorted(unknown)}; use {', '.join(DATABASE_NAMES)}")
    missing = [name for name in DATABASE_NAMES if name not in given]
    if missing and out_dir is None:
        raise GenerateError(f"out_dir: needed for the databases without a URL ({', '.join(missing)})")
    if out_dir is not None:
        files = sqlite_urls(out_dir)
        given.update({name: files[name] for name in missing})
    return {name: given[name] for name in DATABASE_NAMES}


def generate(
    out_dir: Path | str | None = None,
    *,
    database_urls: Mapping[str, str] | None = None,
    people: int = 100_000,
    seed: int = 1,
    progress: Progress | None = None,
    as_of: dt.date = AS_OF,
    batch_rows: int = BATCH_ROWS,
) -> GenerateResult:
    """Generate `people` persons and everything hanging off them into the four databases; replaces earlier data.

    SQLite files go to `out_dir` (created if missing) unless `database_urls` gives a URL for that database
    (sqlite or postgresql+psycopg). `progress(done, total)` is called after each batch with people done so far.
    """
    if isinstance(people, bool) or not isinstance(people, int) or people < 1:
        raise GenerateError("people: a whole number of at least 1")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise GenerateError("seed: a whole number of at least 0")
    folder = Path(out_dir) if out_dir is not None else None
    urls = resolve_urls(folder, database_urls)
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        for name, url in urls.items():
            if url == sqlite_urls(folder)[name]:
                for suffix in ("", "-wal", "-shm", "-journal"):
                    (folder / f"{name}.sqlite{suffix}").unlink(missing_ok=True)
    loaders = {name: Loader(name, url) for name, url in urls.items()}
    result = GenerateResult(people=people, seed=seed, urls=urls, rows=dict.fromkeys(COLUMNS, 0))
    started = time.perf_counter()
    try:
        for loader in loaders.values():
            loader.start()
        world = World(seed, as_of)
        done = 0

        def flush() -> None:
            for key, rows in world.take_rows().items():
                database, table = key.split(".")
                loaders[database].insert(table, COLUMNS[key], rows)
                result.rows[key] += len(rows)
            for loader in loaders.values():
                loader.commit()

        while done < people:
            done += world.household(people - done)
            if world.pending >= batch_rows:
                flush()
                if progress is not None:
                    progress(done, people)
        flush()
        for loader in loaders.values():
            loader.finish()
    except BaseException:
        for loader in loaders.values():
            loader.abort()
        raise
    if progress is not None:
        progress(done, people)
    result.seconds = time.perf_counter() - started
    return result
