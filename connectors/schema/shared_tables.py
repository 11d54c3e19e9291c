"""Tables every database carries: the change log behind the delta feed and the idempotency store for writes."""

from __future__ import annotations

import sqlalchemy as sa

# Operations recorded in a change log.
CHANGE_OPS = ("create", "update", "delete")


def changes_table(metadata: sa.MetaData) -> sa.Table:
    """seq grows with every change: a delta feed reads `seq > last seen`; `at` serves "changes since a time"."""
    return sa.Table(
        "changes",
        metadata,
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("entity", sa.String(32), nullable=False),
        sa.Column("entity_id", sa.String(32), nullable=False),
        sa.Column("op", sa.String(8), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Index("ix_changes_at", "at"),
        sa.Index("ix_changes_entity", "entity", "entity_id"),
    )


def idempotency_table(metadata: sa.MetaData) -> sa.Table:
    """One row per Idempotency-Key: a retried write with the same request hash gets the stored response back."""
    return sa.Table(
        "idempotency",
        metadata,
        sa.Column("key", sa.String(255), primary_key=True),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("status", sa.Integer, nullable=False),
        sa.Column("response", sa.JSON, nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Index("ix_idempotency_created_at", "created_at"),
    )
