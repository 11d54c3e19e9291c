"""The benchmark's figures: collected per case, turned into ratios, printed as a table, written as JSON and Markdown.

`bench/results/latest.json` is one flat object, one key per figure (`{case}_rps`, `{case}_p50_ms`, ...), plus
`machine`, `timestamp`, `notes` and `not_measured` (case -> why). A figure that was not measured is null, never a guess.

The load cases run in interleaved rounds (bench/measure.py). A case's figure is its median over the rounds, and a
ratio is the median of the ratios *within* each round, where both cases ran a minute apart at most, with `_min` and
`_max` beside it: a slow spell on a shared machine then moves one round, not the verdict.

The TLS cases (issue 14) add TLS to both sides of the comparison in the same run: nginx proxying with TLS on both
legs is the baseline of the gateway's TLS cases (`full_tls_vs_nginx_tls`), and the direct HTTPS call to the upstream
is what the TLS hops' added latency is counted from. The plaintext cases stay as they were, for continuity.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import statistics
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bench.loadgen import LoadResult

RESULTS_DIR = Path(__file__).resolve().parent / "results"

# The throughput cases in the order of the issue; nginx_upstream is the reference every case calls.
CASES: dict[str, str] = {
    "nginx_upstream": "1. nginx upstream alone",
    "nginx_proxy": "2. nginx reverse proxy",
    "floor_own": "2a. Python floor: the gateway's server + client, forwarding only",
    "floor_granian": "2b. Python floor: granian (RSGI) + pyreqwest, forwarding only",
    "gateway_bare": "3. gateway, policies off",
    "gateway_full_1hop": "4. gateway, full chain, 1 hop",
    "gateway_full_2hop": "5. full chain, 2 hops",
    "connector_direct": "6a. connector, direct",
    "connector_2hop": "6b. connector via 2 gateways",
    # TLS 1.3 on every leg: client -> HTTPS -> (hops, mutual TLS between gateways) -> HTTPS upstream
    "nginx_upstream_tls": "7. nginx upstream alone, HTTPS",
    "nginx_tls": "8. nginx reverse proxy, TLS on both legs",
    "full_tls": "9. gateway, full chain, 1 hop, TLS on both legs",
    "full_tls_2hop": "10. full chain, 2 hops, TLS on every leg (mutual TLS on the hop)",
}
LOAD_FIGURES = ("rps", "p50_ms", "p99_ms", "p999_ms", "cpu_s_per_1k")
LOW_FIGURES = ("low_p50_ms", "low_p99_ms", "low_rate_rps")

# ratio key -> (numerator case, denominator case, target)
RATIOS: dict[str, tuple[str, str, float]] = {
    "full_vs_nginx": ("gateway_full_1hop", "nginx_proxy", 0.3),
    "full_vs_bare": ("gateway_full_1hop", "gateway_bare", 0.8),
    "twohop_vs_onehop": ("gateway_full_2hop", "gateway_full_1hop", 0.0),
    "connector_2hop_vs_direct": ("connector_2hop", "connector_direct", 0.7),
    "floor_own_vs_nginx": ("floor_own", "nginx_proxy", 0.0),
    "floor_granian_vs_nginx": ("floor_granian", "nginx_proxy", 0.0),
    "bare_vs_floor_own": ("gateway_bare", "floor_own", 0.0),
    # TLS: the gateway against nginx with TLS on both legs, held to the plaintext baseline's target
    "full_tls_vs_nginx_tls": ("full_tls", "nginx_tls", 0.3),
    "tls_twohop_vs_onehop": ("full_tls_2hop", "full_tls", 0.0),
    "full_tls_vs_full": ("full_tls", "gateway_full_1hop", 0.0),  # what TLS leaves of the gateway's throughput
    "nginx_tls_vs_nginx": ("nginx_tls", "nginx_proxy", 0.0),  # and of nginx's
}
# What the hops add at low load: key -> (case with the hops, case without them, how many hops that is)
HOP_ADDED: dict[str, tuple[str, str, int]] = {
    "nginx_proxy_added_p50_ms": ("nginx_proxy", "nginx_upstream", 1),
    "gateway_bare_added_p50_ms": ("gateway_bare", "nginx_upstream", 1),
    "gateway_full_added_p50_ms": ("gateway_full_1hop", "nginx_upstream", 1),
    "second_hop_added_p50_ms": ("gateway_full_2hop", "gateway_full_1hop", 1),
    "connector_2hop_added_p50_ms": ("connector_2hop", "connector_direct", 2),  # the home gateway and national
    # with TLS, counted from the direct HTTPS call to the upstream
    "nginx_tls_added_p50_ms": ("nginx_tls", "nginx_upstream_tls", 1),
    "tls_hop_added_p50_ms": ("full_tls", "nginx_upstream_tls", 1),  # the gateway hop, TLS in and out
    "tls_second_hop_added_p50_ms": ("full_tls_2hop", "full_tls", 1),  # the mesh hop, mutual TLS
    "tls_2hop_added_p50_ms": ("full_tls_2hop", "nginx_upstream_tls", 2),  # both gateways
}
HOP_TARGET_MS = 1.0  # per hop


def _num(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return None if math.isnan(value) or math.isinf(value) else float(value)


class Results:
    """Figures of one run; every case ends either measured or in `not_measured` with a reason."""

    def __init__(self, machine: dict[str, Any], *, quick: bool, rounds: int = 1) -> None:
        self.figures: dict[str, Any] = {}
        self.not_measured: dict[str, str] = {}
        self.notes: list[str] = []
        self.machine = machine
        self.quick = quick
        self.planned_rounds = rounds
        self.generators: dict[str, str] = {}
        self.rounds: dict[str, dict[int, dict[str, float | None]]] = {}  # case -> round -> figure -> value

    def add_load(self, case: str, result: LoadResult, cpu_seconds: float | None, round_no: int = 0) -> None:
        per_1k = cpu_seconds / result.requests * 1000 if cpu_seconds is not None and result.requests else None
        self.rounds.setdefault(case, {})[round_no] = {
            "rps": result.rps, "p50_ms": result.p50_ms, "p99_ms": result.p99_ms, "p999_ms": result.p999_ms,
            "cpu_s_per_1k": per_1k, "requests": result.requests, "errors": result.errors + result.non2xx,
        }  # fmt: skip
        self.generators[case] = result.generator

    def drop(self, case: str, reason: str) -> None:
        """A case that failed in a later round loses its earlier rounds too: no figure from part of a run."""
        self.rounds.pop(case, None)
        self.skip(case, reason)

    def _load_figures(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for case, rounds in self.rounds.items():
            for fig in LOAD_FIGURES:
                values = [v for r in rounds.values() if (v := r[fig]) is not None]
                digits = 4 if fig == "cpu_s_per_1k" else 3
                median = statistics.median(values) if values else None
                out[f"{case}_{fig}"] = median if fig == "rps" else _round(median, digits)
            rates = [float(r["rps"] or 0) for r in rounds.values()]
            out[f"{case}_rps_min"], out[f"{case}_rps_max"] = min(rates), max(rates)
            out[f"{case}_requests"] = sum(int(r["requests"] or 0) for r in rounds.values())
            out[f"{case}_errors"] = sum(int(r["errors"] or 0) for r in rounds.values())
            out[f"{case}_rounds"] = len(rounds)
        return out

    def _ratio(self, num: str, den: str) -> tuple[float | None, float | None, float | None]:
        """Median, min and max over the rounds both cases ran in."""
        a, b = self.rounds.get(num, {}), self.rounds.get(den, {})
        per_round = [x / y for r in sorted(a.keys() & b.keys()) if (x := a[r]["rps"]) and (y := b[r]["rps"])]
        if not per_round:
            return None, None, None
        return (round(statistics.median(per_round), 3), round(min(per_round), 3), round(max(per_round), 3))

    def add_low(self, case: str, result: LoadResult, rate: float) -> None:
        self.figures[f"{case}_low_p50_ms"] = _round(result.p50_ms)
        self.figures[f"{case}_low_p99_ms"] = _round(result.p99_ms)
        self.figures[f"{case}_low_rate_rps"] = rate
        self.figures["low_rate_rps"] = max(rate, self.figures.get("low_rate_rps") or 0)

    def median_rps(self, case: str) -> float | None:
        rates = [r["rps"] for r in self.rounds.get(case, {}).values() if r["rps"]]
        return statistics.median(rates) if rates else None

    def skip(self, case: str, reason: str) -> None:
        self.not_measured[case] = reason

    def add_scale(self, prefix: str, values: dict[str, Any]) -> None:
        """Flatten a scale case's figures under `prefix_`; only scalars make it into the flat object."""
        for key, value in values.items():
            if isinstance(value, dict):
                self.add_scale(f"{prefix}_{key}", value)
            elif value is None or isinstance(value, int | float | str | bool):
                self.figures[f"{prefix}_{key}"] = value

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for case in CASES:
            for fig in (*LOAD_FIGURES, *LOW_FIGURES):
                out[f"{case}_{fig}"] = self.figures.get(f"{case}_{fig}")
        out.update(self._load_figures())
        out.update(self.figures)
        for key, (num, den, _target) in RATIOS.items():
            out[key], out[f"{key}_min"], out[f"{key}_max"] = self._ratio(num, den)
        for key, (with_hop, without, _hops) in HOP_ADDED.items():
            a, b = _num(out.get(f"{with_hop}_low_p50_ms")), _num(out.get(f"{without}_low_p50_ms"))
            out[key] = round(a - b, 3) if a is not None and b is not None else None
        out["generators"] = dict(self.generators)
        out["quick"] = self.quick
        out["rounds"] = self.planned_rounds
        out["machine"] = self.machine
        out["timestamp"] = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        out["notes"] = list(self.notes)
        out["not_measured"] = dict(self.not_measured)
        return out

    def write(self, directory: Path = RESULTS_DIR) -> dict[str, Any]:
        data = self.to_dict()
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "latest.json").write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
        (directory / "latest.md").write_text(markdown(data))
        return data


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def _fmt(value: object, digits: int = 2) -> str:
    number = _num(value)
    if number is None:
        return "-" if value is None else str(value)
    if abs(number) >= 100:
        return f"{number:,.0f}"
    return f"{number:.{digits}f}"


def case_rows(data: dict[str, Any]) -> list[list[str]]:
    rows = []
    for case, label in CASES.items():
        if data.get(f"{case}_rps") is None:
            rows.append([label, "not measured", "", "", "", "", "", ""])
            continue
        rows.append([
            label,
            _fmt(data.get(f"{case}_rps")),
            _fmt(data.get(f"{case}_p50_ms")),
            _fmt(data.get(f"{case}_p99_ms")),
            _fmt(data.get(f"{case}_p999_ms")),
            _fmt(data.get(f"{case}_low_p50_ms")),
            _fmt(data.get(f"{case}_low_p99_ms")),
            _fmt(data.get(f"{case}_cpu_s_per_1k"), 3),
        ])  # fmt: skip
    return rows


HEADERS = ["case", "req/s", "p50 ms", "p99 ms", "p99.9 ms", "low-rate p50 ms", "low-rate p99 ms", "CPU s/1k req"]


def ratio_rows(data: dict[str, Any]) -> list[list[str]]:
    rows = []
    for key, (_num_case, _den, target) in RATIOS.items():
        verdict = "" if data.get(key) is None or not target else ("meets" if data[key] >= target else "misses")
        low, high = data.get(f"{key}_min"), data.get(f"{key}_max")
        spread = f"{_fmt(low, 3)}-{_fmt(high, 3)}" if low is not None and high is not None else ""
        rows.append([key, _fmt(data.get(key), 3), spread, f">= {target}" if target else "", verdict])
    for key, (_with, _without, hops) in HOP_ADDED.items():
        value, limit = data.get(key), HOP_TARGET_MS * hops
        verdict = "" if value is None else ("meets" if value <= limit else "misses")
        shown = f"<= {limit} ms" + (f" ({hops} hops)" if hops > 1 else "")
        rows.append([key, _fmt(value, 3), "", shown, verdict])
    return rows


def scale_rows(data: dict[str, Any]) -> list[list[str]]:
    known = {f"{case}_{fig}" for case in CASES
             for fig in (*LOAD_FIGURES, *LOW_FIGURES, "requests", "errors", "rounds", "rps_min", "rps_max")}
    known |= {f"{key}{end}" for key in RATIOS for end in ("", "_min", "_max")}
    known |= set(HOP_ADDED) | {"machine", "timestamp", "notes", "not_measured", "generators", "quick", "low_rate_rps",
                               "rounds"}
    return [[key, _fmt(value)] for key, value in data.items() if key not in known]


def _lowered_rates(data: dict[str, Any]) -> str:
    """The cases loaded below the common low rate, with their rate: "connector_2hop 172/s"."""
    ceiling = data.get("low_rate_rps") or 0
    return ", ".join(f"{case} {rate:g}/s" for case in CASES
                     if (rate := data.get(f"{case}_low_rate_rps")) is not None and rate < ceiling)  # fmt: skip


def markdown(data: dict[str, Any]) -> str:
    machine = data["machine"]
    lines = [
        f"# lienthong benchmark ({'quick' if data.get('quick') else 'full'} run, {data['timestamp']})",
        "",
        f"Machine: {machine.get('cores')} cores, {machine.get('cpu_model')}. Load at concurrency 32; low-rate "
        f"latency at {data.get('low_rate_rps') or '-'} req/s, or a quarter of a case's own throughput where that is "
        f"lower ({_lowered_rates(data) or 'none was'}). Generators: "
        + (", ".join(f"{k}={v}" for k, v in data.get("generators", {}).items()) or "-")
        + ".",
        "",
        "| " + " | ".join(HEADERS) + " |",
        "|" + "---|" * len(HEADERS),
    ]
    lines += ["| " + " | ".join(row) + " |" for row in case_rows(data)]
    lines += ["", f"Ratios are the median of {data.get('rounds') or 1} interleaved rounds; the spread is their "
              "lowest and highest.", "",
              "| ratio / added latency | value | spread over rounds | target | |", "|---|---|---|---|---|"]
    lines += ["| " + " | ".join(row) + " |" for row in ratio_rows(data)]
    scale = scale_rows(data)
    if scale:
        lines += ["", "| scale figure | value |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in scale]
    if data["not_measured"]:
        lines += ["", "Not measured:", ""]
        lines += [f"- {case}: {why}" for case, why in data["not_measured"].items()]
    if data["notes"]:
        lines += ["", "Notes:", ""]
        lines += [f"- {note}" for note in data["notes"]]
    return "\n".join(lines) + "\n"


def print_table(data: dict[str, Any], console: Console | None = None) -> None:
    console = console or Console(width=max(Console().width, 132))
    table = Table(title="lienthong benchmark", show_lines=False)
    for h in HEADERS:
        table.add_column(h, justify="left" if h == "case" else "right", overflow="fold")
    for row in case_rows(data):
        table.add_row(*row)
    console.print(table)
    ratios = Table(title="ratios and per-hop latency")
    for h in ("figure", "value", "spread over rounds", "target", ""):
        ratios.add_column(h)
    for row in ratio_rows(data):
        ratios.add_row(*row)
    console.print(ratios)
    scale = scale_rows(data)
    if scale:
        table = Table(title="scale cases")
        table.add_column("figure")
        table.add_column("value", justify="right")
        for k, v in scale:
            table.add_row(k, v)
        console.print(table)
    for case, why in data["not_measured"].items():
        console.print(f"[yellow]not measured[/] {case}: {why}")
    for note in data["notes"]:
        console.print(f"[dim]note:[/] {note}")
