"""`make chaos`: faults injected into a live mesh under a steady mixed load, and proof that nothing is lost.

    python -m bench.chaos [--quick] [--root DIR] [--out DIR]

For each fault (gateways, a connector, the registry and Redis stopped or killed and restarted, an upstream slowed
then hung through a fault proxy, the registry restarted under load) a load of mixed calls runs through the two
provincial gateways and the national one. After each fault the run checks that the meter's 2xx counts equal the
successes the client saw per service and consumer, that every answered call has exactly one audit record at its
home gateway (and one at the hosting gateway when it crossed), that `lienthong audit verify` passes on every gateway,
that no call outlived its timeout, and that restarted processes were healthy within 5 s. It prints a table and
writes bench/results/chaos.json and chaos.md. `--quick` runs the same faults with short outages (the test suite).
See docs/faults.md.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson

from bench.chaos_load import CLIENT_TIMEOUT, Load, Recorder, Seen, Target, successes
from bench.chaos_mesh import PROXIED, PROXIED_TIMEOUT_MS, ChaosMesh, start_chaos_mesh
from gateway.ops_auth import operator_token_from
from lienthong.cli.mesh_layout import GATEWAYS
from policies.audit_log import iter_records

RESULTS = Path(__file__).resolve().parent / "results"
HEALTHY_WITHIN = 5.0  # seconds a restarted process may take to be healthy again (the bound)
FORWARD_MARGIN = 1.0  # gateway/calls.py FORWARD_TIMEOUT_MARGIN_MS: the home gateway waits this much longer
SLACK = 2.0  # scheduling slack on a shared 2-core machine
DEFAULT_TIMEOUT_MS = 5000


@dataclass
class Durations:
    lead: float  # load before the fault
    down: float  # gateway / connector down
    registry_down: float
    redis_down: float
    latency: float
    hang: float
    tail: float  # load after recovery
    settle: float  # longest wait for meter counts to catch up

    @classmethod
    def full(cls) -> Durations:
        return cls(lead=5, down=3, registry_down=120, redis_down=60, latency=15, hang=15, tail=5, settle=30)

    @classmethod
    def quick(cls) -> Durations:
        return cls(lead=1.5, down=1, registry_down=4, redis_down=4, latency=2, hang=3, tail=1, settle=15)


@dataclass
class Row:
    fault: str
    sent: int = 0
    succeeded: int = 0
    failed_cleanly: dict[str, int] = field(default_factory=dict)  # "status code" -> n
    no_answer: int = 0  # calls to a process at the moment it was killed: no HTTP answer at all
    lost_records: int = 0
    lost_detail: list[str] = field(default_factory=list)
    unseen_metered: int = 0  # counted by the meter, answer never reached the client (connection cut by a kill)
    audit_verified: bool = True
    max_call_seconds: float = 0.0
    hung_calls: int = 0
    healthy_seconds: float | None = None  # restarted process healthy again
    recover_seconds: float | None = None  # every target answered 2xx again after the fault was removed
    served_during_fault: int = 0  # 2xx answers while the fault was on
    notes: str = ""

    @property
    def ok(self) -> bool:
        healthy = self.healthy_seconds is None or self.healthy_seconds <= HEALTHY_WITHIN
        return (self.lost_records == 0 and self.audit_verified and self.hung_calls == 0 and healthy
                and self.recover_seconds is not None)  # fmt: skip


# -- what the mesh says --------------------------------------------------------------------------------------------


def metered(cm: ChaosMesh) -> Counter[tuple[str, str]]:
    """(service, consumer) -> mesh transactions with outcome 2xx, from a gateway's operations API."""
    now = datetime.now(UTC)
    params = {
        "from": (now - timedelta(hours=2)).isoformat(), "to": (now + timedelta(hours=2)).isoformat(),
        "group_by": "service,consumer,outcome",
    }  # fmt: skip
    token = operator_token_from(cm.mesh.config.paths.gateway("national"), "national")
    r = httpx.get(f"{cm.mesh.gateway_urls['national']}/ops/v1/transactions", params=params, timeout=10,
                  verify=cm.mesh.verify, headers={"Authorization": f"Bearer {token}"})  # fmt: skip
    r.raise_for_status()
    out: Counter[tuple[str, str]] = Counter()
    for g in r.json()["groups"]:
        if g["outcome"] == "found":
            out[(g["service"], g["consumer"])] += int(g["count"])
    return out


def audit_counts(cm: ChaosMesh) -> dict[str, Counter[str]]:
    """gateway -> transaction id -> records in its segment files."""
    out: dict[str, Counter[str]] = {}
    for gw in GATEWAYS:
        directory = cm.gateway_dir(gw.code) / "audit"
        counts: Counter[str] = Counter()
        if directory.is_dir():
            for _, record in iter_records(directory):
                if "transaction_id" in record:
                    counts[str(record["transaction_id"])] += 1
        out[gw.code] = counts
    return out


def audit_verify(cm: ChaosMesh) -> list[str]:
    """Problems `lienthong audit verify` reports, per gateway (empty: every chain holds)."""
    exe = Path(sys.executable).parent / "lienthong"
    problems = []
    for gw in GATEWAYS:
        directory = cm.gateway_dir(gw.code) / "audit"
        done = subprocess.run([str(exe), "audit", "verify", "--dir", str(directory)], capture_output=True, text=True)
        if done.returncode != 0:
            problems.append(f"{gw.code}: exit {done.returncode}: {done.stdout.strip()[-400:]}")
    return problems


# -- one fault -----------------------------------------------------------------------------------------------------


def _timeout_bound(target: Target) -> float:
    ms = PROXIED_TIMEOUT_MS if target.service == PROXIED else DEFAULT_TIMEOUT_MS
    return ms / 1000 + (FORWARD_MARGIN if target.home != target.host else 0) + SLACK


def _recover(cm: ChaosMesh, recorder: Recorder, since: float, deadline: float = 60.0) -> float | None:
    """Seconds from `since` until every target has answered 2xx after it (the load's own calls count)."""
    caller = cm.caller()
    try:
        pending = {t for t in cm.targets}
        end = time.monotonic() + deadline
        while pending and time.monotonic() < end:
            for s in recorder.snapshot():
                if s.at >= since and s.status is not None and s.status < 400:
                    pending.discard(s.target)
            for t in list(pending)[:2]:
                if caller.call(t, recorder).status == 200:
                    pending.discard(t)
            if pending:
                time.sleep(0.1)
        return None if pending else time.time() - since
    finally:
        caller.close()


def _settle(cm: ChaosMesh, before: Counter[tuple[str, str]], seen: list[Seen], seconds: float) -> tuple[
        Counter[tuple[str, str]], Counter[tuple[str, str]]]:  # fmt: skip
    """Wait (bounded) until the meter's new 2xx counts equal the client's; return (client, metered delta)."""
    client = successes(seen)
    end = time.monotonic() + seconds
    while True:
        try:
            now = metered(cm)
        except httpx.HTTPError:
            now = None
        if now is not None:
            delta = Counter({k: now[k] - before[k] for k in now if now[k] - before[k]})
            if delta == client or time.monotonic() > end:
                return client, delta
        elif time.monotonic() > end:
            return client, Counter()
        time.sleep(0.2)


def run_fault(cm: ChaosMesh, name: str, inject: Callable[[Row], float], d: Durations, say: Callable[[str], None],
              threads: int = 3) -> Row:  # fmt: skip
    """Load, fault (inject returns the wall time the fault was removed), recovery, then every check."""
    row = Row(name)
    say(f"fault: {name}")
    before = metered(cm)
    recorder = Recorder()
    load = Load(cm.caller, cm.targets, recorder, threads=threads).start()
    try:
        time.sleep(d.lead)
        fault_on = time.time()
        removed = inject(row)
        row.served_during_fault = sum(
            1 for s in recorder.snapshot() if fault_on <= s.at <= removed and s.status is not None and s.status < 400
        )
        row.recover_seconds = _recover(cm, recorder, removed)
        time.sleep(d.tail)
    finally:
        load.stop()
    seen = recorder.snapshot()
    row.sent = len(seen)
    row.succeeded = sum(1 for s in seen if s.status is not None and s.status < 400)
    failed: Counter[str] = Counter(
        f"{s.status} {s.error or ''}".strip() for s in seen if s.status is not None and s.status >= 400
    )
    row.failed_cleanly = dict(sorted(failed.items()))
    row.no_answer = sum(1 for s in seen if s.status is None)
    row.max_call_seconds = round(max((s.seconds for s in seen), default=0.0), 3)
    row.hung_calls = sum(1 for s in seen if s.seconds > min(_timeout_bound(s.target), CLIENT_TIMEOUT))
    client, delta = _settle(cm, before, seen, d.settle)
    for key in sorted(set(client) | set(delta)):
        missing = client[key] - delta[key]
        if missing > 0:
            row.lost_records += missing
            row.lost_detail.append(f"meter: {key[1]} -> {key[0]}: client saw {client[key]}, metered {delta[key]}")
        elif missing < 0:
            row.unseen_metered += -missing
    _check_audit(cm, row, seen)
    problems = audit_verify(cm)
    row.audit_verified = not problems
    row.lost_detail += [f"audit verify: {p}" for p in problems]
    say(f"  sent {row.sent}, succeeded {row.succeeded}, failed cleanly {row.failed_cleanly}, no answer "
        f"{row.no_answer}, lost {row.lost_records}, recovered in {row.recover_seconds}")  # fmt: skip
    return row


def _check_audit(cm: ChaosMesh, row: Row, seen: list[Seen]) -> None:
    """Every answered call: one record at its home gateway; one at the hosting gateway when it crossed with 2xx."""
    counts = audit_counts(cm)
    for s in seen:
        if s.status is None or s.txid is None:
            continue
        expected = [s.target.home]
        if s.target.host != s.target.home and s.status < 400:
            expected.append(s.target.host)
        for code in expected:
            n = counts[code][s.txid]
            if n != 1:
                row.lost_records += 1 if n == 0 else 0
                row.lost_detail.append(f"audit: {code} holds {n} records of {s.txid} ({s.target.label}, {s.status})")
                if n > 1:
                    row.audit_verified = False


# -- the faults ------------------------------------------------------------------------------------------------------


def kill_and_restart(cm: ChaosMesh, component: str, down: float) -> Callable[[Row], float]:
    def inject(row: Row) -> float:
        cm.mesh.supervisor.kill9(component)
        time.sleep(down)
        removed = time.time()
        row.healthy_seconds = round(cm.mesh.supervisor.restart(component), 3)
        return removed

    return inject


def registry_down(cm: ChaosMesh, down: float) -> Callable[[Row], float]:
    def inject(row: Row) -> float:
        cm.mesh.supervisor.kill9("registry")
        time.sleep(down)
        removed = time.time()
        row.healthy_seconds = round(cm.mesh.supervisor.restart("registry"), 3)
        row.notes = f"registry down {down:.0f} s; gateways served from their cached snapshot"
        return removed

    return inject


def redis_down(cm: ChaosMesh, down: float) -> Callable[[Row], float]:
    def inject(row: Row) -> float:
        cm.redis.stop()  # a clean stop: the append-only file holds every count already flushed
        time.sleep(down)
        removed = time.time()
        started = time.monotonic()
        cm.redis.start()
        row.healthy_seconds = round(time.monotonic() - started, 3)
        row.notes = f"redis down {down:.0f} s; meter spooled and caught up, quota fell back to its bounded allowance"
        return removed

    return inject


def slow_then_hang(cm: ChaosMesh, latency: float, hang: float) -> Callable[[Row], float]:
    def inject(row: Row) -> float:
        cm.proxy.set("delay", 200)
        time.sleep(latency)
        cm.proxy.set("hang")
        time.sleep(hang)
        cm.proxy.set("pass")
        row.notes = (f"{PROXIED}: +200 ms for {latency:.0f} s, then hung {hang:.0f} s "
                     f"(timeout {PROXIED_TIMEOUT_MS} ms, breaker opens after 5 failures)")  # fmt: skip
        return time.time()

    return inject


def registry_restart(cm: ChaosMesh) -> Callable[[Row], float]:
    def inject(row: Row) -> float:
        removed = time.time()
        row.healthy_seconds = round(cm.mesh.supervisor.restart("registry"), 3)
        return removed

    return inject


def faults(cm: ChaosMesh, d: Durations) -> list[tuple[str, Callable[[Row], float]]]:
    return [
        ("kill -9 gateway hanoi", kill_and_restart(cm, "gw-hanoi", d.down)),
        ("kill -9 gateway nghean", kill_and_restart(cm, "gw-nghean", d.down)),
        ("kill -9 gateway national", kill_and_restart(cm, "gw-national", d.down)),
        ("kill -9 connector population", kill_and_restart(cm, "population", d.down)),
        (f"registry down {d.registry_down:.0f} s", registry_down(cm, d.registry_down)),
        (f"redis down {d.redis_down:.0f} s", redis_down(cm, d.redis_down)),
        ("upstream +200 ms, then hung", slow_then_hang(cm, d.latency, d.hang)),
        ("registry restart under load", registry_restart(cm)),
    ]


def run_all(cm: ChaosMesh, d: Durations, say: Callable[[str], None] = print) -> list[Row]:
    return [run_fault(cm, name, inject, d, say) for name, inject in faults(cm, d)]


# -- the table -----------------------------------------------------------------------------------------------------


def _recover_text(row: Row) -> str:
    parts = []
    if row.healthy_seconds is not None:
        parts.append(f"healthy {row.healthy_seconds:.1f} s")
    parts.append(f"calls {row.recover_seconds:.1f} s" if row.recover_seconds is not None else "calls NOT recovered")
    return ", ".join(parts)


def table_md(rows: list[Row], meta: dict[str, Any]) -> str:
    head = ("| fault | calls sent | succeeded | failed cleanly (status) | no answer (killed) | lost records | "
            "max call (s) | time to recover |\n|---|---:|---:|---|---:|---:|---:|---|\n")  # fmt: skip
    lines = []
    for r in rows:
        failed = ", ".join(f"{k}: {v}" for k, v in r.failed_cleanly.items()) or "-"
        lines.append(f"| {r.fault} | {r.sent} | {r.succeeded} | {failed} | {r.no_answer} | {r.lost_records} | "
                     f"{r.max_call_seconds:.2f} | {_recover_text(r)} |")  # fmt: skip
    notes = "\n".join(f"- {r.fault}: {r.notes}" for r in rows if r.notes)
    lost = sum(r.lost_records for r in rows)
    title = f"# Chaos run ({meta['mode']}, {meta['finished']})\n\n"
    return title + head + "\n".join(lines) + f"\n\nLost records in total: **{lost}**. {meta['summary']}\n\n{notes}\n"


def write_results(rows: list[Row], meta: dict[str, Any], out: Path) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    doc = {**meta, "rows": [{**asdict(r), "ok": r.ok} for r in rows]}
    json_path, md_path = out / "chaos.json", out / "chaos.md"
    json_path.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2))
    md_path.write_text(table_md(rows, meta))
    return json_path, md_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short outages (seconds instead of minutes)")
    parser.add_argument("--root", type=Path, help="state folder for the mesh (default: a temporary folder)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where chaos.json and chaos.md go")
    args = parser.parse_args(argv)
    durations = Durations.quick() if args.quick else Durations.full()
    root = args.root or Path(tempfile.mkdtemp(prefix="lienthong-chaos-"))
    started = time.monotonic()
    cm = start_chaos_mesh(root, say=lambda line: print(f"  {line}"))
    try:
        rows = run_all(cm, durations)
    finally:
        cm.stop()
    ok = all(r.ok for r in rows)
    meta = {
        "mode": "quick" if args.quick else "full", "finished": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "seconds": round(time.monotonic() - started, 1), "durations": asdict(durations),
        "summary": "Every check held." if ok else "SOME CHECKS FAILED: see chaos.json (lost_detail).",
    }  # fmt: skip
    json_path, md_path = write_results(rows, meta, args.out)
    print(md_path.read_text())
    print(f"written: {json_path}, {md_path}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
