"""Data generation rate and lookup latency by personal ID, for `make bench` (10 M people) and by hand.

    python -m bench.datagen_bench [PEOPLE]

Generation rate is rows of all four databases per second of wall time, indexes included. Lookup latency is one
in-process `SELECT ... FROM persons WHERE id = ?` through SQLAlchemy Core (a compiled, cached statement on one open
connection) for random existing IDs, as a connector serves them.
"""

from __future__ import annotations

import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import sqlalchemy as sa

from connectors.datagen import generate, sqlite_urls
from connectors.schema import population

LOOKUPS = 20_000
WARMUP = 2_000


def _sample_ids(conn: sa.Connection, count: int, rng: random.Random) -> list[str]:
    """Random existing IDs: rowids are 1..N in load order, so a random rowid is a random person."""
    top = conn.exec_driver_sql("SELECT max(rowid) FROM persons").scalar_one()
    pick = sa.text("SELECT id FROM persons WHERE rowid = :r")
    return [conn.execute(pick, {"r": rng.randint(1, top)}).scalar_one() for _ in range(count)]


def _percentile(sorted_values: list[float], fraction: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, round(fraction * (len(sorted_values) - 1)))]


def run(people: int = 100_000, workdir: Path | None = None, lookups: int = LOOKUPS) -> dict[str, float]:
    """Generate `people` into SQLite files, time `lookups` random ID lookups, delete the files, return the figures."""
    base = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="lienthong-datagen-"))
    out = base / "data"
    try:
        result = generate(out, people=people, seed=1)
        size = sum(f.stat().st_size for f in out.iterdir())
        engine = sa.create_engine(sqlite_urls(out)["population"])
        persons = population.persons
        statement = sa.select(persons).where(persons.c.id == sa.bindparam("id"))
        rng = random.Random(2)
        with engine.connect() as conn:
            ids = _sample_ids(conn, lookups + WARMUP, rng)
            for person_id in ids[:WARMUP]:
                conn.execute(statement, {"id": person_id}).one()
            timings = []
            clock = time.perf_counter_ns
            for person_id in ids[WARMUP:]:
                started = clock()
                conn.execute(statement, {"id": person_id}).one()
                timings.append((clock() - started) / 1e6)
        engine.dispose()
    finally:
        shutil.rmtree(out, ignore_errors=True)
        if workdir is None:
            shutil.rmtree(base, ignore_errors=True)
    timings.sort()
    return {
        "people": people,
        "rows": result.total_rows,
        "seconds": round(result.seconds, 2),
        "rows_per_s": round(result.rows_per_second),
        "people_per_s": round(people / result.seconds),
        "db_mb": round(size / 2**20),
        "lookup_count": len(timings),
        "lookup_p50_ms": round(_percentile(timings, 0.50), 4),
        "lookup_p99_ms": round(_percentile(timings, 0.99), 4),
        "lookup_mean_ms": round(sum(timings) / len(timings), 4),
    }


if __name__ == "__main__":
    print(run(int(sys.argv[1]) if len(sys.argv) > 1 else 100_000))
