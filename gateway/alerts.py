"""The mesh's alerts from one definition (gateway/alert_rules.yaml): Prometheus rules for the Helm chart, and an
evaluator over the operations API's own data for GET /ops/v1/alerts, so an operator without Prometheus sees the
same rules firing.

Each signal has a PromQL expression over what /metrics exports (gateway/metrics.py) and a Python twin over the
ops data: the meter's outcome counts and latency histograms of the last hour (policies/meter_query.py), and the
component health of gateway/ops_components.py (heartbeats: snapshot age, certificate expiry, spool backlog,
connectors). The evaluator has no memory: a rule is `firing` while its value breaches the threshold, where
Prometheus would first hold it `for` its duration (both report `for`).

    python -m gateway.alerts > helm/lienthong/files/prometheus-rules.yaml   # the chart's copy (a test checks it)
"""

from __future__ import annotations

import asyncio
import operator
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis
import yaml

from gateway.ops_components import Local, components
from policies.meter_query import error_rates, service_latency
from policies.outcome import FAILURES

RULES_FILE = Path(__file__).resolve().parent / "alert_rules.yaml"
MESH = 'role=~"home|local"'  # each call once, at the consumer's home gateway, as the meter counts mesh transactions
METER_WINDOW = "1h"  # the meter keeps per-minute counts of the last hour: the window the evaluator can measure
OPS = {">": operator.gt, "<": operator.lt}


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    signal: str
    op: str
    threshold: float
    window: str
    for_: str
    severity: str
    summary: str
    klass: str = ""  # outcome_rate's outcome class


@dataclass(frozen=True, slots=True)
class OpsData:
    """What the evaluator reads: meter outcome counts and per-service latency of the last hour, and components."""

    outcomes: dict[str, int]
    latency: list[dict[str, Any]]
    components: list[dict[str, Any]]


def load_rules(path: Path = RULES_FILE) -> list[Rule]:
    rules = []
    for raw in yaml.safe_load(path.read_text())["rules"]:
        rule = Rule(name=raw["name"], signal=raw["signal"], op=raw["op"], threshold=float(raw["threshold"]),
                    window=str(raw["window"]), for_=str(raw["for"]), severity=raw["severity"],
                    summary=raw["summary"], klass=raw.get("class", ""))  # fmt: skip
        if rule.signal not in SIGNALS or rule.op not in OPS:
            raise ValueError(f"alert rule {rule.name}: unknown signal {rule.signal!r} or op {rule.op!r}")
        if rule.signal == "outcome_rate" and rule.klass not in FAILURES:
            raise ValueError(f"alert rule {rule.name}: class must be one of {sorted(FAILURES)}")
        if rule.signal in ("outcome_rate", "latency_p99") and rule.window != METER_WINDOW:
            raise ValueError(f"alert rule {rule.name}: the evaluator measures over {METER_WINDOW} only")
        rules.append(rule)
    return rules


# -- the signals: PromQL and its Python twin -----------------------------------------------------------------------


def _outcome_rate_promql(r: Rule) -> str:
    calls = "lienthong_gateway_requests_total"
    return (f'sum(rate({calls}{{{MESH},outcome="{r.klass}"}}[{r.window}])) '
            f"/ sum(rate({calls}{{{MESH}}}[{r.window}]))")  # fmt: skip


def _outcome_rate(r: Rule, d: OpsData) -> tuple[float | None, str]:
    total = sum(d.outcomes.values())
    if not total:
        return None, "no mesh calls in the last hour"
    n = d.outcomes.get(r.klass, 0)
    return n / total, f"{n} of {total} mesh calls in the last hour were {r.klass}"


def _latency_p99(r: Rule, d: OpsData) -> tuple[float | None, str]:
    items = [i for i in d.latency if i.get("count")]
    if not items:
        return None, "no mesh calls in the last hour"
    # a p99 beyond the last bucket is None: slower than the histogram can tell, so worse than any threshold
    worst = max(items, key=lambda i: float("inf") if i.get("p99_ms") is None else float(i["p99_ms"]))
    value = float("inf") if worst.get("p99_ms") is None else float(worst["p99_ms"]) / 1000
    return value, f"{worst['service']}: p99 {value:.3f} s over {worst['count']} calls (histogram bucket bound)"


def _gateways(d: OpsData) -> list[dict[str, Any]]:
    return [c for c in d.components if c.get("kind") == "gateway" and c.get("status") == "up"]


def _worst(d: OpsData, key: Callable[[dict[str, Any]], float | None], highest: bool, unit: str
           ) -> tuple[float | None, str]:  # fmt: skip
    values = [(v, g["name"]) for g in _gateways(d) if (v := key(g)) is not None]
    if not values:
        return None, "no gateway reports it"
    value, name = max(values) if highest else min(values)
    return value, f"gateway {name}: {value:.0f} {unit}"


def _snapshot_age(r: Rule, d: OpsData) -> tuple[float | None, str]:
    return _worst(d, lambda g: g.get("snapshot_age_seconds"), True, "s")


def _certificate_expiry(r: Rule, d: OpsData) -> tuple[float | None, str]:
    return _worst(d, lambda g: g.get("certificate_expires_in_seconds"), False, "s left")


def _spool_backlog(r: Rule, d: OpsData) -> tuple[float | None, str]:
    return _worst(d, lambda g: float(max((g.get("spool_backlog_bytes") or {"-": 0}).values())), True, "bytes")


def _component_down(r: Rule, d: OpsData) -> tuple[float | None, str]:
    down = [f"{c['kind']} {c['name']}" for c in d.components if c.get("status") == "down"]
    return float(len(down)), ", ".join(down) or "every component is up or not yet called"


@dataclass(frozen=True, slots=True)
class Signal:
    promql: Callable[[Rule], str]
    value: Callable[[Rule, OpsData], tuple[float | None, str]]


LATENCY_P99 = ("max(histogram_quantile(0.99, sum by (service, le) "
               "(rate(lienthong_gateway_request_seconds_bucket{%s}[%s]))))")
SNAPSHOT_AGE = "max by (lienthong_gateway) (time() - lienthong_gateway_snapshot_confirmed_timestamp_seconds)"
CERT_EXPIRY = "min by (lienthong_gateway) (lienthong_gateway_certificate_expiry_seconds)"
SPOOL = "max by (lienthong_gateway) (sum by (lienthong_gateway, spool) (lienthong_gateway_spool_backlog_bytes))"
# a connector its gateway sees down (any worker), or a gateway Prometheus cannot scrape
DOWN = ("(sum(1 - min by (lienthong_gateway, service) (lienthong_gateway_connector_up)) or vector(0))"
        ' + (sum(1 - up{lienthong_gateway!=""}) or vector(0))')  # fmt: skip
SIGNALS: dict[str, Signal] = {
    "outcome_rate": Signal(_outcome_rate_promql, _outcome_rate),
    "latency_p99": Signal(lambda r: LATENCY_P99 % (MESH, r.window), _latency_p99),
    "snapshot_age": Signal(lambda r: SNAPSHOT_AGE, _snapshot_age),
    "certificate_expiry": Signal(lambda r: CERT_EXPIRY, _certificate_expiry),
    "spool_backlog": Signal(lambda r: SPOOL, _spool_backlog),
    "component_down": Signal(lambda r: DOWN, _component_down),
}


def _number(value: float) -> str:
    return str(int(value)) if value == int(value) else repr(value)


def prometheus_rules(rules: list[Rule]) -> dict[str, Any]:
    """The rules as a Prometheus rule file (the `groups` a PrometheusRule's spec holds too)."""
    out = []
    for r in rules:
        out.append({
            "alert": r.name,
            "expr": f"{SIGNALS[r.signal].promql(r)} {r.op} {_number(r.threshold)}",
            "for": r.for_,
            "labels": {"severity": r.severity, "signal": r.signal},
            "annotations": {"summary": r.summary},
        })  # fmt: skip
    return {"groups": [{"name": "lienthong", "rules": out}]}


def evaluate(rules: list[Rule], data: OpsData) -> list[dict[str, Any]]:
    """Each rule's state (firing, ok, or no-data when nothing measures it yet) and value, in the rules' order."""
    out = []
    for r in rules:
        value, detail = SIGNALS[r.signal].value(r, data)
        state = "no-data" if value is None else "firing" if OPS[r.op](value, r.threshold) else "ok"
        shown = None if value is None or value == float("inf") else round(value, 6)
        out.append({"name": r.name, "signal": r.signal, "class": r.klass or None, "severity": r.severity,
                    "op": r.op, "threshold": r.threshold, "window": r.window, "for": r.for_, "summary": r.summary,
                    "state": state, "value": shown, "detail": detail})  # fmt: skip
    return out


async def current(
    rules: list[Rule], client: redis.Redis, known: list[str], local: Local | None, store: Any,
    keep_dims: Callable[[Sequence[str]], bool] | None, keep_service: Callable[[str], bool] | None,
) -> dict[str, Any]:  # fmt: skip
    """GET /ops/v1/alerts: every rule evaluated over what the asker may see (a member: its own calls and services)."""
    now = datetime.now(UTC)
    comps = await components(client, known, local, store, keep_service)
    try:
        errors, latency = await asyncio.gather(
            asyncio.to_thread(error_rates, client, "hour", now, None, keep_dims),
            asyncio.to_thread(service_latency, client, "hour", now, keep_service),
        )
    except redis.RedisError:  # the component_down rule still fires, on Redis's own entry
        errors, latency = {"outcomes": {}}, {"items": []}
    results = evaluate(rules, OpsData(errors["outcomes"], latency["items"], comps["items"]))
    return {"time": time.time(), "firing": sum(r["state"] == "firing" for r in results), "rules": results}


def main() -> int:
    header = "# Generated from gateway/alert_rules.yaml by `python -m gateway.alerts`: edit that file, not this one.\n"
    sys.stdout.write(header + yaml.safe_dump(prometheus_rules(load_rules()), sort_keys=False, width=200))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
