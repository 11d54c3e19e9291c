"""The central transaction log's figures (issue 18), on PostgreSQL through the real ingest path:

- ingest rate: records written as spool lines, then shipped by policies.txlog_ship (JSON parse, batches of
  MAX_BATCH_LINES, COPY into the day partitions, watermark in the same transaction): target >= 50,000 records/s;
- the p99 of a one-day, one-client query (the first page, newest first, as /ops/v1/calls asks it) at each size:
  target < 100 ms at 20 million records;
- with --tracker, the data tracker's figure (issue 19): one person's report over a year (TxlogStore.accesses, the
  first page) with 2 to 20 million records in the tracker's index spread over 2 million people: target p99 < 50 ms.
  The index is seeded by SQL (generate_series), not shipped: its ingest is part of the ingest rate above.

    python -m bench.txlog_bench [--sizes 2000000,20000000] [--tracker] [--url postgresql://postgres@127.0.0.1:5432/test]

Prints one JSON document. `run(sizes, url)` and `run_tracker(sizes, url)` return theirs (for bench/run.py). Each works
in a schema of its own, dropped after.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import sys
import tempfile
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from contextlib import nullcontext
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import orjson
import psycopg

from policies.txlog_postgres import SUBJECT_INDEX, PostgresStore
from policies.txlog_ship import Shipper, Spool
from policies.txlog_store import DAY_US, Filters, micros, month_start, next_month, us

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/test"
DAYS = 10  # the records spread over this many days, so each day is a partition of size/DAYS
CLIENTS = 500
SERVICES = 50
CHUNK = 200_000  # spool lines written, then shipped, at a time
QUERIES = 300
ROLES = ("home", "provider")
PEOPLE = 2_000_000
TRACKER = "VN/GOV/BCA/data-tracker/accesses"
OUTCOMES = ("found",) * 90 + ("no-data",) * 5 + ("client-error", "provider-failure", "platform-failure") * 1 + (
    "not-permitted",) * 2  # fmt: skip


def client(i: int) -> str:
    return f"VN/PROV/P{i:03d}/system-{i % 7}"


def spool_lines(start: int, n: int, t0: float, rng: random.Random) -> bytes:
    """n records as the txlog policy spools them, spread over DAYS days from t0."""
    out = []
    for i in range(start, start + n):
        t = t0 + rng.random() * DAYS * 86400
        ms = rng.expovariate(1 / 20)
        outcome = OUTCOMES[i % len(OUTCOMES)]
        out.append(orjson.dumps({
            "id": f"gw{i % 63}:{uuid.UUID(int=rng.getrandbits(128)).hex}:home", "time_in": t, "time_out": t + ms / 1000,
            "request_out": t + 0.0002, "response_in": t + ms / 1000 - 0.0002, "duration_ms": round(ms, 3),
            "client": client(rng.randrange(CLIENTS)), "service": f"VN/GOV/M{i % SERVICES:02d}/registry/items",
            "endpoint": "/items/{id}", "method": "GET", "status": 200 if outcome == "found" else 404,
            "outcome": outcome, "error_type": None if outcome == "found" else "http-404", "request_bytes": 0,
            "response_bytes": rng.randrange(200, 4000), "xroad_id": f"{i:032x}", "user_id": None,
            "purpose": "identity-verification", "subject_hmacs": [f"{rng.getrandbits(256):064x}"],
            "consumer_gateway": f"gw{i % 63}", "provider_gateway": "national", "gateway": f"gw{i % 63}",
            # a call that crossed two gateways has a home and a provider record: half go to the tracker's index
            "role": ROLES[i % 2], "grant_id": f"grant-{i % 900}", "withheld_until": None, "user_disclosed": i % 3 == 0,
        }, option=orjson.OPT_APPEND_NEWLINE))  # fmt: skip
    return b"".join(out)


_STORE: list[PostgresStore] = []  # a shipper process's own store


def _ship_file(url: str, path: str) -> None:
    """One gateway's shipper: ship a spool file to the store (in a process of its own when there are several)."""
    if not _STORE:
        _STORE.append(PostgresStore(url))
        _STORE[0].health()
    if path:
        Shipper("bench", Spool(Path(path).parent), _STORE[0], retention_days=0).ship(Path(path), 0)


def fill(store: PostgresStore, folder: Path, have: int, want: int, t0: float, rng: random.Random,
         shippers: int = 1) -> tuple[float, float]:  # fmt: skip
    """Ship records have..want through `shippers` shippers at once (processes, as gateways are: a mesh's gateways
    ship to one store together); returns the seconds spent shipping (not generating) and this process's CPU seconds
    in them."""
    spent = cpu = 0.0
    with ProcessPoolExecutor(shippers, mp_context=get_context("spawn")) if shippers > 1 else nullcontext() as pool:
        if pool is not None:
            list(pool.map(_ship_file, [store.url] * shippers, [""] * shippers))  # started and connected, untimed
        while have < want:
            n = min(CHUNK, want - have)
            paths = []
            for k in range(shippers):
                lo, hi = have + n * k // shippers, have + n * (k + 1) // shippers
                paths.append(folder / f"spool-{k}-{uuid.uuid4().hex}.jsonl")
                paths[-1].write_bytes(spool_lines(lo, hi - lo, t0, rng))
            started, cpu_started = time.perf_counter(), time.process_time()
            if pool is None:
                Shipper("bench", Spool(folder), store, retention_days=0).ship(paths[0], 0)
            else:
                list(pool.map(_ship_file, [store.url] * shippers, [str(p) for p in paths]))
            spent += time.perf_counter() - started
            cpu += time.process_time() - cpu_started
            for path in paths:
                path.unlink()
            have += n
    return spent, cpu


def server_cpu(url: str) -> float:
    """CPU seconds used so far by the store's connections (their backends, on this machine): the server's share of
    ingest, which a loaded machine's wall clock does not show."""
    with psycopg.connect(url, autocommit=True) as conn:
        pids = [r[0] for r in conn.execute("SELECT pid FROM pg_stat_activity WHERE application_name = %s",
                                           ("lienthong-txlog",)).fetchall()]  # fmt: skip
    used = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        used += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime
    return used


def query_p99(store: PostgresStore, t0: float, rng: random.Random) -> dict[str, float]:
    """One-day, one-client first pages (limit 100, newest first), as the ops API asks them."""
    day0 = us(t0) // DAY_US * DAY_US + DAY_US
    times = []
    for _ in range(QUERIES):
        start = day0 + rng.randrange(DAYS - 1) * DAY_US
        began = time.perf_counter()
        page = store.query(Filters(client=client(rng.randrange(CLIENTS))), start, start + DAY_US, 100)
        times.append((time.perf_counter() - began) * 1000)
        assert page.rows, "a client-day with no record: the data set is not what the benchmark assumes"
    times.sort()
    return {"p50_ms": round(times[len(times) // 2], 2), "p99_ms": round(times[int(len(times) * 0.99) - 1], 2),
            "max_ms": round(times[-1], 2)}  # fmt: skip


def run(sizes: tuple[int, ...] = (2_000_000, 20_000_000), url: str = DEFAULT_URL, shippers: int = 1) -> dict[str, Any]:
    schema = f"txlog_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute(f"CREATE SCHEMA {schema}")
    store = PostgresStore(f"{url}?options=-csearch_path%3D{schema}")
    rng = random.Random(18)
    t0 = time.time() - DAYS * 86400
    results: dict[str, Any] = {"target": {"ingest_records_per_s": 50_000, "query_p99_ms_at_20M": 100},
                               "days": DAYS, "clients": CLIENTS, "shippers": shippers, "sizes": {}}  # fmt: skip
    have = 0
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for size in sorted(sizes):
                server = server_cpu(url)
                spent, cpu = fill(store, Path(tmp), have, size, t0, rng, shippers)
                rate = (size - have) / spent
                cpu_us = {"shipper": cpu * 1e6 / (size - have),
                          "server": (server_cpu(url) - server) * 1e6 / (size - have)}  # fmt: skip
                have = size
                with psycopg.connect(store.url, autocommit=True) as conn:
                    conn.execute("ANALYZE txlog")
                results["sizes"][str(size)] = {
                    "ingest_records_per_s": round(rate), "load_average": round(os.getloadavg()[0], 2),
                    # CPU µs per record (shipper: this process, so only with one shipper; server: its backends)
                    "cpu_us_per_record": {k: round(v, 1) for k, v in cpu_us.items() if k == "server" or shippers == 1},
                    "query": query_p99(store, t0, rng),
                }  # fmt: skip
                print(orjson.dumps({"size": size, **results["sizes"][str(size)]}).decode(), file=sys.stderr)
    finally:
        store.close()
        with psycopg.connect(url, autocommit=True) as admin:
            admin.execute(f"DROP SCHEMA {schema} CASCADE")
    return results


def person_hmac(person: int) -> str:
    """The seeded pseudonym of person n, as SEED_SUBJECTS computes it in SQL."""
    return hashlib.sha256(f"person-{person}".encode()).hexdigest()


# records lo..hi-1 of the tracker's index over the year [%(start)s, %(end)s): each about a random one of PEOPLE, one
# in ten naming its official, one in fifty withheld for 90 days
SEED_SUBJECTS = """
INSERT INTO txlog_subjects (hmac, time_in, id, client, service, endpoint, method, purpose, outcome, xroad_id, user_id,
                            withheld_until)
SELECT encode(sha256(convert_to('person-' || floor(random() * %(people)s)::bigint, 'UTF8')), 'hex'), at,
       'gw' || i %% 63 || ':' || md5(i::text) || ':provider', 'VN/PROV/P' || lpad((i %% 500)::text, 3, '0') || '/sys',
       'VN/GOV/M' || lpad((i %% 50)::text, 2, '0') || '/registry/items', '/items/{id}', 'GET', 'identity-verification',
       'found', md5(i::text), CASE WHEN i %% 10 = 0 THEN 'officer-' || i %% 1000 END,
       CASE WHEN i %% 50 = 0 THEN at + interval '90 days' END
FROM (SELECT i, %(start)s::timestamptz + random() * (%(end)s::timestamptz - %(start)s::timestamptz) AS at
      FROM generate_series(%(lo)s::bigint, %(hi)s::bigint - 1) AS i) AS r
"""


def seed_subjects(url: str, have: int, want: int, start: Any, end: Any) -> float:
    """Bulk-load index rows have..want-1 as a restore would: the index dropped, the rows inserted, the index rebuilt
    (ANALYZE after); returns the seconds spent."""
    began = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP INDEX IF EXISTS txlog_subjects_hmac_time")
        conn.execute("SET maintenance_work_mem = '512MB'")
        for lo in range(have, want, CHUNK * 10):
            conn.execute(SEED_SUBJECTS, {"lo": lo, "hi": min(want, lo + CHUNK * 10), "start": start, "end": end,
                                         "people": PEOPLE})  # fmt: skip
        conn.execute(SUBJECT_INDEX)
        conn.execute("VACUUM ANALYZE txlog_subjects")
    return time.perf_counter() - began


def report_times(store: PostgresStore, hmacs_of: Any, start: int, end: int, rng: random.Random) -> dict[str, Any]:
    """p50/p99 of one person's first page (limit 100) over the year, as the tracker asks it."""
    times, found = [], 0
    for _ in range(QUERIES):
        hmacs = hmacs_of(rng.randrange(PEOPLE))
        began = time.perf_counter()
        page, _withheld = store.accesses(hmacs, start, end, end, 100, None, TRACKER)
        times.append((time.perf_counter() - began) * 1000)
        found += len(page.rows)
    times.sort()
    return {"p50_ms": round(times[len(times) // 2], 2), "p99_ms": round(times[int(len(times) * 0.99) - 1], 2),
            "max_ms": round(times[-1], 2), "rows_per_report": round(found / QUERIES, 1)}  # fmt: skip


def run_tracker(sizes: tuple[int, ...] = (2_000_000, 20_000_000), url: str = DEFAULT_URL) -> dict[str, Any]:
    """The tracker's index at each size (records spread over a year, 12 month partitions, and PEOPLE people): the
    report of a random person, with the current key only and with a retired key too (two pseudonyms)."""
    schema = f"txlog_tracker_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute(f"CREATE SCHEMA {schema}")
    store = PostgresStore(f"{url}?options=-csearch_path%3D{schema}")
    rng = random.Random(19)
    end = month_start(us(time.time()))  # the year: the twelve whole months before this one
    start = end.replace(year=end.year - 1)
    months, month = [], start
    while month < end:
        months.append(micros(month))
        month = next_month(month)
    results: dict[str, Any] = {"target": {"report_p99_ms_at_20M": 50}, "people": PEOPLE, "months": len(months),
                               "sizes": {}}  # fmt: skip
    have = 0
    try:
        store.ensure_partitions(months)
        for size in sorted(sizes):
            seeded = seed_subjects(store.url, have, size, start, end)
            have = size
            window = (micros(start), micros(end))
            results["sizes"][str(size)] = {
                "seed_s": round(seeded, 1),
                "one_key": report_times(store, lambda p: (person_hmac(p),), *window, rng),
                "two_keys": report_times(store, lambda p: (person_hmac(p), person_hmac(p + PEOPLE)), *window, rng),
            }
            print(orjson.dumps({"size": size, **results["sizes"][str(size)]}).decode(), file=sys.stderr)
    finally:
        store.close()
        with psycopg.connect(url, autocommit=True) as admin:
            admin.execute(f"DROP SCHEMA {schema} CASCADE")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="2000000,20000000", help="Comma-separated store sizes to measure at.")
    parser.add_argument("--url", default=DEFAULT_URL, help="A PostgreSQL database the benchmark may make a schema in.")
    parser.add_argument("--tracker", action="store_true", help="Measure the data tracker's report instead of ingest.")
    parser.add_argument("--shippers", type=int, default=1, help="Shipper processes shipping at once (gateways).")
    args = parser.parse_args()
    sizes = tuple(int(s) for s in args.sizes.split(",") if s.strip())
    result = run_tracker(sizes, args.url) if args.tracker else run(sizes, args.url, args.shippers)
    sys.stdout.write(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode() + "\n")


if __name__ == "__main__":
    main()
