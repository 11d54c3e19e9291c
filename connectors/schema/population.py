"""The national population database: persons (Law on Identification 2023 art. 9 fields), households, residence."""

from __future__ import annotations

import sqlalchemy as sa

from connectors.schema.shared_tables import changes_table, idempotency_table

SEXES = ("M", "F")
MARITAL_STATUSES = ("single", "married", "divorced", "widowed")
RELATIONS_TO_HEAD = ("head", "spouse", "child", "parent", "grandchild", "sibling", "other")
RESIDENCE_KINDS = ("permanent", "temporary", "current")
BLOOD_TYPES = ("O", "A", "B", "AB")

metadata = sa.MetaData()

persons = sa.Table(
    "persons",
    metadata,
    sa.Column("id", sa.String(12), primary_key=True),  # personal ID number
    sa.Column("full_name", sa.String(120), nullable=False),  # birth name
    sa.Column("other_names", sa.String(120), nullable=True),
    sa.Column("birth_date", sa.Date, nullable=False),
    sa.Column("sex", sa.String(1), nullable=False),
    sa.Column("birth_place", sa.String(200), nullable=False),
    sa.Column("birth_registration_province", sa.String(3), nullable=False),
    sa.Column("hometown", sa.String(200), nullable=False),
    sa.Column("ethnicity", sa.String(40), nullable=False),
    sa.Column("religion", sa.String(40), nullable=False),
    sa.Column("nationality", sa.String(2), nullable=False),  # ISO 3166-1 alpha-2
    sa.Column("blood_type", sa.String(2), nullable=True),
    sa.Column("old_id", sa.String(9), nullable=True),  # the old 9-digit ID card number
    sa.Column("card_issue_date", sa.Date, nullable=True),
    sa.Column("card_issue_place", sa.String(200), nullable=True),
    sa.Column("card_expiry", sa.Date, nullable=True),
    sa.Column("father_id", sa.String(12), nullable=True),
    sa.Column("mother_id", sa.String(12), nullable=True),
    sa.Column("spouse_id", sa.String(12), nullable=True),
    sa.Column("marital_status", sa.String(10), nullable=False),
    sa.Column("household_id", sa.String(16), nullable=True),
    sa.Column("relation_to_head", sa.String(12), nullable=True),
    sa.Column("death_date", sa.Date, nullable=True),
    sa.Column("phone", sa.String(15), nullable=True),
    sa.Column("email", sa.String(120), nullable=True),
    sa.Column("restricted", sa.Boolean, nullable=False, default=False),
    sa.Column("change_seq", sa.Integer, nullable=False, default=0),  # seq of the last change; 0 = as loaded
    sa.Index("ix_persons_household_id", "household_id"),
    sa.Index("ix_persons_father_id", "father_id"),
    sa.Index("ix_persons_mother_id", "mother_id"),
    sa.Index("ix_persons_old_id", "old_id"),
    sa.Index("ix_persons_change_seq", "change_seq"),
)

households = sa.Table(
    "households",
    metadata,
    sa.Column("id", sa.String(16), primary_key=True),
    sa.Column("head_id", sa.String(12), nullable=False),
    sa.Column("address", sa.String(200), nullable=False),
    sa.Column("province_code", sa.String(3), nullable=False),
    sa.Index("ix_households_head_id", "head_id"),
    sa.Index("ix_households_province_code", "province_code"),
)

residence = sa.Table(
    "residence",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("person_id", sa.String(12), nullable=False),
    sa.Column("kind", sa.String(10), nullable=False),  # permanent, temporary, current
    sa.Column("address", sa.String(200), nullable=False),
    sa.Column("province_code", sa.String(3), nullable=False),
    sa.Column("valid_from", sa.Date, nullable=False),
    sa.Column("valid_to", sa.Date, nullable=True),  # null = still valid
    sa.Index("ix_residence_person_id", "person_id", "valid_from"),
)

changes = changes_table(metadata)
idempotency = idempotency_table(metadata)


def create_all(engine: sa.Engine) -> None:
    metadata.create_all(engine)
