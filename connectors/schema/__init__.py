"""SQLAlchemy Core tables of the four databases the connectors serve (SQLite and PostgreSQL).

`DATABASES` maps each database name to its module's `metadata`; `create_all(engine, name)` creates one database's
tables and indexes. Foreign keys are not declared: the generator bulk-loads rows in any order, and real registries
hold references to people or enterprises that another database owns; the generator's tests check every reference.
"""

from __future__ import annotations

import sqlalchemy as sa

from connectors.schema import business, civil_status, insurance, population

DATABASES: dict[str, sa.MetaData] = {
    "population": population.metadata,
    "business": business.metadata,
    "insurance": insurance.metadata,
    "civil_status": civil_status.metadata,
}


def create_all(engine: sa.Engine, name: str) -> None:
    """Create the tables and indexes of database `name` (population, business, insurance, civil_status)."""
    DATABASES[name].create_all(engine)


__all__ = ["DATABASES", "business", "civil_status", "create_all", "insurance", "population"]
