"""Provincial civil status registers: birth registrations (one database, every province; filter by province_code)."""

from __future__ import annotations

import sqlalchemy as sa

from connectors.schema.shared_tables import changes_table, idempotency_table

metadata = sa.MetaData()

births = sa.Table(
    "births",
    metadata,
    sa.Column("id", sa.String(16), primary_key=True),
    sa.Column("province_code", sa.String(3), nullable=False),  # province where the birth was registered
    sa.Column("child_name", sa.String(120), nullable=False),
    sa.Column("sex", sa.String(1), nullable=False),
    sa.Column("birth_date", sa.Date, nullable=False),
    sa.Column("birth_place", sa.String(200), nullable=False),
    sa.Column("father_id", sa.String(12), nullable=True),
    sa.Column("mother_id", sa.String(12), nullable=True),
    sa.Column("registered_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("personal_id", sa.String(12), nullable=True),  # null until the population database issues one
    sa.Column("hi_card_code", sa.String(15), nullable=True),  # null until insurance issues the TE card
    sa.Column("change_seq", sa.Integer, nullable=False, default=0),
    sa.Index("ix_births_province_code", "province_code", "registered_at"),
    sa.Index("ix_births_personal_id", "personal_id"),
    sa.Index("ix_births_father_id", "father_id"),
    sa.Index("ix_births_mother_id", "mother_id"),
    sa.Index("ix_births_change_seq", "change_seq"),
)

changes = changes_table(metadata)
idempotency = idempotency_table(metadata)


def create_all(engine: sa.Engine) -> None:
    metadata.create_all(engine)
