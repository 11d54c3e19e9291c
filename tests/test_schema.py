"""The four databases' tables create on SQLite and carry an index on every lookup key."""

from __future__ import annotations

import sqlalchemy as sa

from connectors import schema

LOOKUP_KEYS = {
    "population": {"persons": {"id", "household_id", "father_id", "mother_id", "change_seq"},
                   "households": {"id", "head_id"}, "residence": {"person_id"}, "changes": {"seq", "at"},
                   "idempotency": {"key"}},
    "business": {"enterprises": {"code", "parent_code", "name_folded", "legal_rep_id"},
                 "owners": {"enterprise_code", "personal_id"}},
    "insurance": {"insured": {"si_number", "person_id"}, "hi_cards": {"code", "si_number"}},
    "civil_status": {"births": {"id", "province_code", "personal_id", "father_id", "mother_id"}},
}  # fmt: skip


def _leading_columns(inspector: sa.Inspector, table: str) -> set[str]:
    first = {idx["column_names"][0] for idx in inspector.get_indexes(table) if idx["column_names"]}
    return first | set(inspector.get_pk_constraint(table)["constrained_columns"][:1])


def test_every_lookup_key_is_indexed_on_sqlite(tmp_path):
    for name, tables in LOOKUP_KEYS.items():
        engine = sa.create_engine(f"sqlite:///{tmp_path / name}.sqlite")
        schema.create_all(engine, name)
        inspector = sa.inspect(engine)
        assert set(tables) <= set(inspector.get_table_names())
        for table, keys in tables.items():
            missing = keys - _leading_columns(inspector, table)
            assert not missing, f"{name}.{table} lacks an index on {missing}"
        engine.dispose()


def test_changes_seq_autoincrements(tmp_path):
    engine = sa.create_engine(f"sqlite:///{tmp_path}/p.sqlite")
    schema.create_all(engine, "population")
    changes = schema.population.changes
    with engine.begin() as conn:
        for entity_id in ("a", "b"):
            conn.execute(changes.insert().values(entity="person", entity_id=entity_id, op="update",
                                                 at=sa.func.current_timestamp()))
        seqs = conn.execute(sa.select(changes.c.seq).order_by(changes.c.seq)).scalars().all()
    assert seqs == [1, 2]
    engine.dispose()
