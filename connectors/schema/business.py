"""The national business registration database: enterprises and their branches, and owners."""

from __future__ import annotations

import sqlalchemy as sa

from connectors.schema.shared_tables import changes_table, idempotency_table

metadata = sa.MetaData()

enterprises = sa.Table(
    "enterprises",
    metadata,
    sa.Column("code", sa.String(14), primary_key=True),  # 10 digits, or 10 digits + "-" + 3 for a branch
    sa.Column("parent_code", sa.String(10), nullable=True),  # set for branches
    sa.Column("name", sa.String(255), nullable=False),
    sa.Column("name_folded", sa.String(255), nullable=False),  # connectors.rules.vietnamese.fold(name)
    sa.Column("legal_status", sa.String(40), nullable=False),  # a code of connectors.rules.legal_status
    sa.Column("head_office", sa.String(255), nullable=False),
    sa.Column("province_code", sa.String(3), nullable=False),
    sa.Column("legal_rep_name", sa.String(120), nullable=False),
    sa.Column("legal_rep_id", sa.String(12), nullable=False),  # a personal ID present in the population database
    sa.Column("legal_rep_nationality", sa.String(2), nullable=False),
    sa.Column("charter_capital", sa.BigInteger, nullable=False),  # VND
    sa.Column("registered_on", sa.Date, nullable=False),
    sa.Column("change_seq", sa.Integer, nullable=False, default=0),
    sa.Index("ix_enterprises_parent_code", "parent_code"),
    sa.Index("ix_enterprises_name_folded", "name_folded"),
    sa.Index("ix_enterprises_legal_rep_id", "legal_rep_id"),
    sa.Index("ix_enterprises_province_code", "province_code"),
    sa.Index("ix_enterprises_change_seq", "change_seq"),
)

owners = sa.Table(
    "owners",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("enterprise_code", sa.String(14), nullable=False),
    sa.Column("name", sa.String(255), nullable=False),
    sa.Column("personal_id", sa.String(12), nullable=True),  # an individual owner
    sa.Column("owner_enterprise_code", sa.String(10), nullable=True),  # an enterprise owner
    sa.Column("share", sa.Float, nullable=False),  # percent of charter capital; an enterprise's owners sum to 100
    sa.Index("ix_owners_enterprise_code", "enterprise_code"),
    sa.Index("ix_owners_personal_id", "personal_id"),
    sa.Index("ix_owners_owner_enterprise_code", "owner_enterprise_code"),
)

changes = changes_table(metadata)
idempotency = idempotency_table(metadata)


def create_all(engine: sa.Engine) -> None:
    metadata.create_all(engine)
