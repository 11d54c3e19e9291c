"""Bulk loading of generated rows into one database: SQLite with executemany, PostgreSQL with COPY.

Tables are created without their secondary indexes, which are built once after the load (much faster than
maintaining them row by row). SQLite loads with journal_mode=OFF and synchronous=OFF (a crash mid-load leaves
a half-built file that the next run deletes anyway) and is left in WAL mode for the connectors.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.schema import CreateIndex, CreateTable

from connectors.schema import DATABASES


def _bind_none_fast() -> None:
    """The sqlite3 module looks for an adapter for every None it binds, failing slowly (about half a microsecond
    each, a third of the time of a persons insert); an identity adapter for NoneType makes that lookup succeed.
    Process-wide, and harmless: None still binds as NULL."""
    sqlite3.register_adapter(type(None), _none)


def _none(_value: None) -> None:
    return None


class UnsupportedDatabase(ValueError):
    """The generator loads SQLite and PostgreSQL only."""


class Loader:
    """One database being generated: `start()`, then `insert()` batches and `commit()`, then `finish()`."""

    def __init__(self, name: str, url: str) -> None:
        self.name = name
        self.url = url
        self.metadata = DATABASES[name]
        self.engine = sa.create_engine(url)
        self.kind = self.engine.dialect.name
        if self.kind not in ("sqlite", "postgresql"):
            raise UnsupportedDatabase(f"database {name}: only sqlite and postgresql URLs work, not {self.kind}")
        self.dbapi: Any = None
        self._sql: dict[str, str] = {}

    def start(self) -> None:
        """Drop what an earlier run left, create the tables (indexes come later) and open the bulk connection."""
        schema = self._search_path_schema()
        if schema is not None:
            with self.engine.begin() as conn:
                conn.execute(sa.schema.CreateSchema(schema, if_not_exists=True))
        self.metadata.drop_all(self.engine)
        with self.engine.begin() as conn:
            for table in self.metadata.sorted_tables:
                conn.execute(CreateTable(table))
        self.dbapi = self.engine.raw_connection()
        driver = self.dbapi.driver_connection
        if self.kind == "sqlite":
            _bind_none_fast()
            # no journal while loading: nothing is written twice, and a crashed load is deleted by the next run
            driver.execute("PRAGMA journal_mode=OFF")
            driver.execute("PRAGMA synchronous=OFF")
            # the persons primary key gets random inserts: keep its B-tree in memory (10 M ids ~ 300 MiB)
            driver.execute(f"PRAGMA cache_size=-{512 * 1024 if self.name == 'population' else 64 * 1024}")
            driver.execute("PRAGMA temp_store=MEMORY")
        else:
            with driver.cursor() as cur:
                cur.execute("SET TIME ZONE 'UTC'")  # generated timestamps are UTC wall-clock strings

    def _search_path_schema(self) -> str | None:
        """The schema a PostgreSQL URL's `options=-csearch_path=NAME` points at, so it can be created first."""
        if self.kind != "postgresql":
            return None
        options = self.engine.url.query.get("options")
        if not isinstance(options, str):
            return None
        for option in options.split():
            if option.startswith("-csearch_path="):
                return option.removeprefix("-csearch_path=").split(",")[0].strip() or None
        return None

    def insert(self, table: str, columns: Sequence[str], rows: list[tuple[object, ...]]) -> None:
        if not rows:
            return
        driver = self.dbapi.driver_connection
        quote = self.engine.dialect.identifier_preparer.quote
        names = ", ".join(quote(c) for c in columns)
        if self.kind == "sqlite":
            sql = self._sql.get(table)
            if sql is None:
                statement = sa.insert(self.metadata.tables[table])
                sql = self._sql[table] = str(statement.compile(dialect=self.engine.dialect, column_keys=list(columns)))
            driver.executemany(sql, rows)
            return
        with driver.cursor() as cur, cur.copy(f"COPY {quote(table)} ({names}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)

    def commit(self) -> None:
        self.dbapi.driver_connection.commit()

    def finish(self) -> None:
        """Build the secondary indexes, refresh planner statistics and close."""
        self.commit()
        self.dbapi.close()
        self.dbapi = None
        with self.engine.begin() as conn:
            for table in self.metadata.sorted_tables:
                for index in sorted(table.indexes, key=lambda i: str(i.name)):
                    conn.execute(CreateIndex(index))
            if self.kind == "sqlite":
                conn.exec_driver_sql("PRAGMA analysis_limit=1000")  # sampled statistics: seconds, not minutes, at 10 M
            conn.exec_driver_sql("ANALYZE")
        if self.kind == "sqlite":
            with self.engine.connect() as conn:
                conn.exec_driver_sql("PRAGMA journal_mode=WAL")  # readers and writers side by side from now on
        self.engine.dispose()

    def abort(self) -> None:
        if self.dbapi is not None:
            self.dbapi.close()
            self.dbapi = None
        self.engine.dispose()
