"""The benchmark's figures: collected per case, turned into ratios, printed as a table, written as JSON and Markdown.

`bench/results/latest.json` is one flat object, one key per figure (`{case}_rps`, `{case}_p50_ms`, ...), plus
`machine`, `timestamp`, `notes` and `not_measured` (case -> why). A figure that was not measured is null, never a guess.
"""

from __future__ import annotations

import datetime as dt
import json
import math
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
}
LOAD_FIGURES = ("rps", "p50_ms", "p99_ms", "p999_ms", "cpu_s_per_1k")
LOW_FIGURES = ("low_p50_ms", "low_p99_ms")

# ratio key -> (numerator case, denominator case, target)
RATIOS: dict[str, tuple[str, str, float]] = {
    "full_vs_nginx": ("gateway_full_1hop", "nginx_proxy", 0.3),
    "full_vs_bare": ("gateway_full_1hop", "gateway_bare", 0.8),
    "twohop_vs_onehop": ("gateway_full_2hop", "gateway_full_1hop", 0.0),
    "connector_2hop_vs_direct": ("connector_2hop", "connector_direct", 0.7),
    "floor_own_vs_nginx": ("floor_own", "nginx_proxy", 0.0),
    "floor_granian_vs_nginx": ("floor_granian", "nginx_proxy", 0.0),
    "bare_vs_floor_own": ("gateway_bare", "floor_own", 0.0),
}
# What one hop adds at low load: key -> (case with the hop, case without it)
HOP_ADDED: dict[str, tuple[str, str]] = {
    "nginx_proxy_added_p50_ms": ("nginx_proxy", "nginx_upstream"),
    "gateway_bare_added_p50_ms": ("gateway_bare", "nginx_upstream"),
    "gateway_full_added_p50_ms": ("gateway_full_1hop", "nginx_upstream"),
    "second_hop_added_p50_ms": ("gateway_full_2hop", "gateway_full_1hop"),
    "connector_2hop_added_p50_ms": ("connector_2hop", "connector_direct"),
}
HOP_TARGET_MS = 1.0


def _num(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return None if math.isnan(value) or math.isinf(value) else float(value)


class Results:
    """Figures of one run; every case ends either measured or in `not_measured` with a reason."""

    def __init__(self, machine: dict[str, Any], *, quick: bool) -> None:
        self.figures: dict[str, Any] = {}
        self.not_measured: dict[str, str] = {}
        self.notes: list[str] = []
        self.machine = machine
        self.quick = quick
        self.generators: dict[str, str] = {}

    def add_load(self, case: str, result: LoadResult, cpu_seconds: float | None) -> None:
        self.figures[f"{case}_rps"] = result.rps
        self.figures[f"{case}_p50_ms"] = _round(result.p50_ms)
        self.figures[f"{case}_p99_ms"] = _round(result.p99_ms)
        self.figures[f"{case}_p999_ms"] = _round(result.p999_ms)
        per_1k = cpu_seconds / result.requests * 1000 if cpu_seconds is not None and result.requests else None
        self.figures[f"{case}_cpu_s_per_1k"] = _round(per_1k, 4)
        self.figures[f"{case}_requests"] = result.requests
        self.figures[f"{case}_errors"] = result.errors + result.non2xx
        self.generators[case] = result.generator

    def add_low(self, case: str, result: LoadResult, rate: float) -> None:
        self.figures[f"{case}_low_p50_ms"] = _round(result.p50_ms)
        self.figures[f"{case}_low_p99_ms"] = _round(result.p99_ms)
        self.figures["low_rate_rps"] = rate

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
        out.update(self.figures)
        for key, (num, den, _target) in RATIOS.items():
            a, b = _num(out.get(f"{num}_rps")), _num(out.get(f"{den}_rps"))
            out[key] = round(a / b, 3) if a is not None and b else None
        for key, (with_hop, without) in HOP_ADDED.items():
            a, b = _num(out.get(f"{with_hop}_low_p50_ms")), _num(out.get(f"{without}_low_p50_ms"))
            out[key] = round(a - b, 3) if a is not None and b is not None else None
        out["generators"] = dict(self.generators)
        out["quick"] = self.quick
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
        rows.append([key, _fmt(data.get(key), 3), f">= {target}" if target else "", verdict])
    for key in HOP_ADDED:
        value = data.get(key)
        verdict = "" if value is None else ("meets" if value <= HOP_TARGET_MS else "misses")
        rows.append([key, _fmt(value, 3), f"<= {HOP_TARGET_MS} ms", verdict])
    return rows


def scale_rows(data: dict[str, Any]) -> list[list[str]]:
    known = {f"{case}_{fig}" for case in CASES for fig in (*LOAD_FIGURES, *LOW_FIGURES, "requests", "errors")}
    known |= set(RATIOS) | set(HOP_ADDED) | {"machine", "timestamp", "notes", "not_measured", "generators", "quick",
                                             "low_rate_rps"}
    return [[key, _fmt(value)] for key, value in data.items() if key not in known]


def markdown(data: dict[str, Any]) -> str:
    machine = data["machine"]
    lines = [
        f"# lienthong benchmark ({'quick' if data.get('quick') else 'full'} run, {data['timestamp']})",
        "",
        f"Machine: {machine.get('cores')} cores, {machine.get('cpu_model')}. Load at concurrency 32; low-rate "
        f"latency at {data.get('low_rate_rps') or '-'} req/s. Generators: "
        + (", ".join(f"{k}={v}" for k, v in data.get("generators", {}).items()) or "-")
        + ".",
        "",
        "| " + " | ".join(HEADERS) + " |",
        "|" + "---|" * len(HEADERS),
    ]
    lines += ["| " + " | ".join(row) + " |" for row in case_rows(data)]
    lines += ["", "| ratio / added latency | value | target | |", "|---|---|---|---|"]
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
    for h in ("figure", "value", "target", ""):
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
