"""The national insurance database: insured people (by social insurance number) and health insurance cards."""

from __future__ import annotations

import sqlalchemy as sa

from connectors.schema.shared_tables import changes_table, idempotency_table

metadata = sa.MetaData()

insured = sa.Table(
    "insured",
    metadata,
    sa.Column("si_number", sa.String(10), primary_key=True),
    sa.Column("person_id", sa.String(12), nullable=False),  # a personal ID present in the population database
    sa.Column("full_name", sa.String(120), nullable=False),
    sa.Column("birth_date", sa.Date, nullable=False),
    sa.Column("province_code", sa.String(3), nullable=False),
    sa.Column("change_seq", sa.Integer, nullable=False, default=0),
    sa.Index("ix_insured_person_id", "person_id", unique=True),
    sa.Index("ix_insured_change_seq", "change_seq"),
)

hi_cards = sa.Table(
    "hi_cards",
    metadata,
    sa.Column("code", sa.String(15), primary_key=True),
    sa.Column("si_number", sa.String(10), nullable=False),
    sa.Column("category", sa.String(2), nullable=False),
    sa.Column("benefit_level", sa.Integer, nullable=False),
    sa.Column("province_code", sa.String(3), nullable=False),  # 3-digit code; the card code carries its 2-digit form
    sa.Column("valid_from", sa.Date, nullable=False),
    sa.Column("valid_to", sa.Date, nullable=True),
    sa.Column("primary_care_facility_code", sa.String(5), nullable=False),
    sa.Column("primary_care_facility_name", sa.String(200), nullable=False),
    sa.Column("change_seq", sa.Integer, nullable=False, default=0),
    sa.Index("ix_hi_cards_si_number", "si_number"),
    sa.Index("ix_hi_cards_change_seq", "change_seq"),
)

changes = changes_table(metadata)
idempotency = idempotency_table(metadata)


def create_all(engine: sa.Engine) -> None:
    metadata.create_all(engine)
