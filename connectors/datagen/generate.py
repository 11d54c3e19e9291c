"""`generate()`: build the population, business, insurance and civil status databases, consistent with each other."""

from __future__ import annotations

import datetime as dt
import multiprocessing
import os
import queue
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa

from connectors.datagen.households import COLUMNS, Row, World
from connectors.datagen.loader import Loader
from connectors.schema import DATABASES

# The day the generated country is seen from. Fixed, so one seed gives the same rows whatever day it runs.
AS_OF = dt.date(2025, 7, 1)
BATCH_ROWS = 50_000
# From this many people on, a forked child builds the rows and loads the business and civil status databases while
# this process loads population and insurance (most of the rows): two cores instead of one, about evenly loaded.
PARALLEL_FROM = 200_000
PARENT_DATABASES = ("population", "insurance")
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


def sqlite_urls(out_dir: Path | str) -> dict[str, str]:
    """The SQLite file URL of each database under `out_dir` (`population.sqlite`, ...)."""
    return {name: f"sqlite:///{(Path(out_dir) / f'{name}.sqlite').resolve()}" for name in DATABASE_NAMES}


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
    for name, url in given.items():
        try:
            backend = sa.make_url(url).get_backend_name()
        except sa.exc.ArgumentError:
            raise GenerateError(f"database_urls[{name}]: not a database URL") from None
        if backend not in ("sqlite", "postgresql"):
            raise GenerateError(f"database_urls[{name}]: only sqlite and postgresql databases, not {backend}")
    if out_dir is not None:
        files = sqlite_urls(out_dir)
        given.update({name: files[name] for name in missing})
    return {name: given[name] for name in DATABASE_NAMES}


Batch = tuple[int, dict[str, list[Row]]]
Counts = dict[str, int]


def _batches(seed: int, as_of: dt.date, people: int, batch_rows: int) -> Iterator[Batch]:
    """(people done so far, rows) every `batch_rows` rows; the last batch has every person."""
    world = World(seed, as_of)
    done = 0
    while done < people:
        done += world.household(people - done)
        if world.pending >= batch_rows:
            yield done, world.take_rows()
    yield done, world.take_rows()


def _load(batches: Iterator[Batch], loaders: Mapping[str, Loader], counts: Counts) -> Iterator[Batch]:
    """Load the rows of `loaders`' databases, count them, and pass the other databases' rows on."""
    for done, batch in batches:
        rest: dict[str, list[Row]] = {}
        for key, rows in batch.items():
            database, table = key.split(".")
            loader = loaders.get(database)
            if loader is None:
                rest[key] = rows
                continue
            loader.insert(table, COLUMNS[key], rows)
            counts[key] += len(rows)
        for loader in loaders.values():
            loader.commit()
        yield done, rest


def _put(out: multiprocessing.Queue, item: object, parent: int) -> None:
    """Put on the bounded queue, giving up (and exiting) if the parent died, so no orphan blocks forever."""
    while True:
        try:
            out.put(item, timeout=1.0)
            return
        except queue.Full:
            if os.getppid() != parent:
                raise SystemExit(1) from None


def _child_main(seed: int, as_of: dt.date, people: int, batch_rows: int, urls: dict[str, str],
                out: multiprocessing.Queue, parent: int) -> None:  # fmt: skip
    """Forked child: build every row, load `urls`' databases, pass the rest on `out`; end with its counts or error."""
    loaders = {name: Loader(name, url) for name, url in urls.items()}
    counts: Counts = dict.fromkeys(COLUMNS, 0)
    try:
        for loader in loaders.values():
            loader.start()
        for batch in _load(_batches(seed, as_of, people, batch_rows), loaders, counts):
            _put(out, ("rows", batch), parent)
        _put(out, ("loaded", None), parent)
        for loader in loaders.values():
            loader.finish()  # index building overlaps the parent's
        _put(out, ("done", counts), parent)
    except BaseException as exc:  # the parent reports it; a child traceback alone would be lost
        for loader in loaders.values():
            loader.abort()
        if not isinstance(exc, SystemExit):
            _put(out, ("error", f"{type(exc).__name__}: {exc}"), parent)


class Child:
    """A forked child running _child_main, read through a bounded queue (constant memory).

    fork, not spawn: spawn re-imports the caller's __main__, which would run an unguarded script again. The child
    starts before this process opens any database connection.
    """

    def __init__(self, seed: int, as_of: dt.date, people: int, batch_rows: int, urls: dict[str, str]) -> None:
        context = multiprocessing.get_context("fork")
        self.out = context.Queue(maxsize=4)
        args = (seed, as_of, people, batch_rows, urls, self.out, os.getpid())
        self.child = context.Process(target=_child_main, args=args, daemon=True, name="lienthong-datagen")
        self.child.start()

    def _next(self) -> tuple[str, object]:
        while True:
            try:
                item: tuple[str, object] = self.out.get(timeout=1.0)
                return item
            except queue.Empty:
                if not self.child.is_alive():
                    raise RuntimeError(f"the generating process died (exit code {self.child.exitcode})") from None

    def batches(self) -> Iterator[Batch]:
        """The rows the child passes on, until every row is built and loaded (its indexes may still be building)."""
        while True:
            kind, payload = self._next()
            if kind == "rows":
                yield payload  # type: ignore[misc]
            elif kind == "loaded":
                return
            else:
                raise RuntimeError(f"the generating process failed: {payload}")

    def wait(self) -> Counts:
        """The child's row counts, once its indexes are built."""
        kind, payload = self._next()
        if kind != "done":
            raise RuntimeError(f"the generating process failed: {payload}")
        self.close()
        return payload  # type: ignore[return-value]

    def close(self) -> None:
        if self.child.is_alive():
            self.child.terminate()
        self.child.join(5)


def generate(
    out_dir: Path | str | None = None,
    *,
    database_urls: Mapping[str, str] | None = None,
    people: int = 100_000,
    seed: int = 1,
    progress: Progress | None = None,
    as_of: dt.date = AS_OF,
    batch_rows: int = BATCH_ROWS,
    parallel: bool | None = None,
) -> GenerateResult:
    """Generate `people` persons and everything hanging off them into the four databases; replaces earlier data.

    SQLite files go to `out_dir` (created if missing) unless `database_urls` gives a URL for that database
    (sqlite or postgresql+psycopg). `progress(done, total)` is called after each batch with people done so far.
    `parallel` splits the work with a forked child (default: from PARALLEL_FROM people); the rows are the same.
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
    result = GenerateResult(people=people, seed=seed, urls=urls, rows=dict.fromkeys(COLUMNS, 0))
    started = time.perf_counter()
    use_child = people >= PARALLEL_FROM if parallel is None else parallel
    child = None
    if use_child:
        child = Child(seed, as_of, people, batch_rows, {n: u for n, u in urls.items() if n not in PARENT_DATABASES})
    loaders = {name: Loader(name, url) for name, url in urls.items() if child is None or name in PARENT_DATABASES}
    done = 0
    try:
        for loader in loaders.values():
            loader.start()
        source = child.batches() if child is not None else _batches(seed, as_of, people, batch_rows)
        for done, rest in _load(source, loaders, result.rows):
            assert not rest, f"rows of no database: {sorted(rest)}"
            if progress is not None and done < people:
                progress(done, people)
        for loader in loaders.values():
            loader.finish()
        if child is not None:
            for key, count in child.wait().items():
                result.rows[key] += count
    except BaseException:
        if child is not None:
            child.close()
        for loader in loaders.values():
            loader.abort()
        raise
    if progress is not None:
        progress(done, people)
    result.seconds = time.perf_counter() - started
    return result
