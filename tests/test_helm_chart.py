"""Static checks of the Helm chart in helm/lienthong, since no helm binary exists here to render it.

What is checked: Chart.yaml and values.yaml parse and hold what the templates need; every .Values path a template
reads exists in values.yaml; every template's {{ }} and if/range/with/define ... end blocks balance; the Grafana
dashboard only queries metric names and labels that gateway/metrics.py exports; every flag a template passes to
`lienthong ... serve` or `lienthong ... cert` exists in that command's real --help output, and the required ones are
all passed; every link is TLS (https URLs, HTTPS probes and scrapes, the mesh CA from its Secret, certificates from
Secrets or issued at start by init containers); and the registry starts the way its pod runs it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import httpx
import jsonschema
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.parser import text_string_to_metric_families

from gateway import metrics as gateway_metrics
from lienthong import ids, keys, pki
from lienthong.redis_connection import free_port
from lienthong.subjects import SUBJECT_KEY_ENV
from registry import keyfiles, mesh_ca
from registry.client import RegistryClient
from tests.procs import Proc, lienthong

CHART = Path(__file__).resolve().parent.parent / "helm" / "lienthong"
PROFILES = {"national": CHART / "values-national.yaml", "province": CHART / "values-province.yaml"}
TEMPLATES = sorted(p for p in (CHART / "templates").iterdir() if p.suffix in (".yaml", ".tpl", ".txt"))
DASHBOARD = CHART / "dashboards" / "lienthong-mesh.json"

# helm/render.py: the chart rendered as `helm template` would, without helm (helm/ is not a package)
_spec = importlib.util.spec_from_file_location("lienthong_helm_render", CHART.parent / "render.py")
assert _spec is not None and _spec.loader is not None
_render = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = _render
_spec.loader.exec_module(_render)

# Labels Prometheus adds to every scraped series; lienthong_gateway comes from the gateway pods' label
# lienthong-gateway (annotation scraping with the usual labelmap, or the chart's PodMonitor podTargetLabels).
TARGET_LABELS = frozenset({"lienthong_gateway", "pod", "namespace", "instance", "job"})
BLOCK_OPENERS = frozenset({"if", "range", "with", "define", "block"})
PROMQL_KEYWORDS = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset"}
)


def _values() -> dict[str, Any]:
    loaded = yaml.safe_load((CHART / "values.yaml").read_text())
    assert isinstance(loaded, dict)
    return loaded


def _actions(text: str) -> list[tuple[int, str]]:
    """Each {{ ... }} action as (line number, body without the trim markers), comments dropped."""
    found = []
    for m in re.finditer(r"\{\{(.*?)\}\}", text, re.S):
        body = m.group(1).strip()
        body = body.removeprefix("-").removesuffix("-").strip()
        if body.startswith("/*"):
            continue
        found.append((text.count("\n", 0, m.start()) + 1, body))
    return found


# ---------------------------------------------------------------------------------------------- template structure


def template_balance_errors(text: str) -> list[str]:
    """Unbalanced {{ }} delimiters or if/range/with/define blocks without their end, as messages with line numbers."""
    errors = []
    if text.count("{{") != text.count("}}"):
        errors.append(f"{text.count('{{')} '{{{{' against {text.count('}}')} '}}}}'")
    pos = 0
    while True:
        start, close = text.find("{{", pos), text.find("}}", pos)
        if start == -1 and close == -1:
            break
        if start == -1 or -1 < close < start:
            errors.append(f"line {text.count(chr(10), 0, close) + 1}: '}}}}' without its '{{{{'")
            pos = close + 2
            continue
        end = text.find("}}", start + 2)
        if end == -1:
            errors.append(f"line {text.count(chr(10), 0, start) + 1}: '{{{{' never closed")
            break
        if text.find("{{", start + 2, end) != -1:
            errors.append(f"line {text.count(chr(10), 0, start) + 1}: '{{{{' inside an open action")
        pos = end + 2
    stack: list[tuple[str, int]] = []
    for line, body in _actions(text):
        word = body.split(None, 1)[0] if body else ""
        if word in BLOCK_OPENERS:
            stack.append((word, line))
        elif word == "else":
            if not stack or stack[-1][0] not in ("if", "range", "with"):
                errors.append(f"line {line}: else outside an if/range/with")
        elif word == "end":
            if not stack:
                errors.append(f"line {line}: end without an open block")
            else:
                stack.pop()
    errors.extend(f"line {line}: {word} is never closed with end" for word, line in stack)
    return errors


def test_balance_check_catches_a_missing_end() -> None:
    good = "{{- if .Values.a }}\n{{- range $x := .Values.b }}{{ $x }}{{- end }}\n{{- else }}no{{- end }}\n"
    assert template_balance_errors(good) == []
    assert any("never closed" in e for e in template_balance_errors("{{- if .Values.a }}\nx\n"))
    assert any("without an open block" in e for e in template_balance_errors("x {{ end }}"))
    assert template_balance_errors("{{ .Values.a }") != []


@pytest.mark.parametrize("template", TEMPLATES, ids=lambda p: p.name)
def test_template_is_balanced(template: Path) -> None:
    assert template_balance_errors(template.read_text()) == []


# ------------------------------------------------------------------------------------------------ .Values paths


@dataclass
class ValuesUse:
    """The .Values paths a template reads, directly or through $variables bound to a values node."""

    paths: set[tuple[str, ...]] = field(default_factory=set)
    item_paths: set[tuple[tuple[str, ...], tuple[str, ...]]] = field(default_factory=set)  # (list path, item field)
    unbound_ranges: list[str] = field(default_factory=list)


_VALUES_REF = r"\$?\.Values((?:\.[A-Za-z_]\w*)+)"


def values_use(text: str) -> ValuesUse:
    use = ValuesUse()
    bound: dict[str, tuple[tuple[str, ...], bool]] = {}  # $var -> (values path, is a range item)
    for _line, body in _actions(text):
        ranged = re.match(r"range\s+\$(\w+)\s*:=\s*" + _VALUES_REF, body)
        if ranged:
            bound[ranged.group(1)] = (tuple(ranged.group(2).split(".")[1:]), True)
        elif re.match(r"range\s+(?:\$\w+\s*,\s*\$\w+\s*:=\s*)?\$?\.Values", body):
            # without a bound item variable, `.x` inside the loop could not be told apart from root fields
            use.unbound_ranges.append(body)
        else:
            assigned = re.match(r"\$(\w+)\s*:=\s*" + _VALUES_REF + r"\s*$", body)
            if assigned:
                bound[assigned.group(1)] = (tuple(assigned.group(2).split(".")[1:]), False)
        for m in re.finditer(r"(?<![\w)])" + _VALUES_REF, body):
            use.paths.add(tuple(m.group(1).split(".")[1:]))
        for m in re.finditer(r"\$(\w+)((?:\.[A-Za-z_]\w*)+)", body):
            if m.group(1) in bound:
                base, is_item = bound[m.group(1)]
                rest = tuple(m.group(2).split(".")[1:])
                if is_item:
                    use.item_paths.add((base, rest))
                else:
                    use.paths.add(base + rest)
    return use


def _walk(node: Any, path: tuple[str, ...]) -> bool:
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return False
        node = node[key]
    return True


def missing_values(use: ValuesUse, values: dict[str, Any]) -> list[str]:
    """Paths that do not exist in values; an item field must exist in at least one item of its list."""
    missing = [".Values." + ".".join(p) for p in sorted(use.paths) if not _walk(values, p)]
    for base, rest in sorted(use.item_paths):
        node: Any = values
        for key in base:
            node = node.get(key) if isinstance(node, dict) else None
        items = node if isinstance(node, list) else []
        if not any(_walk(item, rest) for item in items):
            missing.append(f".Values.{'.'.join(base)}[].{'.'.join(rest)}")
    return missing


def test_values_check_catches_a_wrong_path() -> None:
    values = {"image": {"tag": "1"}, "gateways": [{"code": "a", "kid": ""}, {"code": "b"}], "d": {"port": 1}}
    text = (
        "{{ .Values.image.tag }}{{ $.Values.image.repository }}{{- $d := .Values.d }}{{ $d.port }}{{ $d.host }}"
        "{{- range $gw := .Values.gateways }}{{ $gw.code }}{{ $gw.kid }}{{ $gw.cod }}{{- end }}"
    )
    use = values_use(text)
    assert missing_values(use, values) == [".Values.d.host", ".Values.image.repository", ".Values.gateways[].cod"]
    assert values_use("{{- range .Values.gateways }}{{ .code }}{{ end }}").unbound_ranges


def test_every_values_path_in_the_templates_exists() -> None:
    values = _values()
    total = ValuesUse()
    problems = []
    for template in TEMPLATES:
        use = values_use(template.read_text())
        problems += [f"{template.name}: {m}" for m in missing_values(use, values)]
        problems += [f"{template.name}: range without an item variable: {b}" for b in use.unbound_ranges]
        total.paths |= use.paths
        total.item_paths |= use.item_paths
    assert problems == []
    # the extraction itself must have found the chart's settings, or the check above proved nothing
    assert ("image", "repository") in total.paths
    assert ("gatewayDefaults", "persistence", "enabled") in total.paths
    assert (("gateways",), ("workers",)) in total.item_paths
    assert (("connectors",), ("databaseSecret", "name")) in total.item_paths
    assert len(total.paths) + len(total.item_paths) > 40


def test_chart_and_values_parse() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2"
    assert chart["name"] == "lienthong"
    assert re.fullmatch(r"\d+\.\d+\.\d+", chart["version"])
    values = _values()
    assert values["image"]["repository"] and values["image"]["tag"]
    assert values["podSecurityContext"]["runAsNonRoot"] is True
    assert values["containerSecurityContext"]["readOnlyRootFilesystem"] is True
    codes = []
    for gw in values["gateways"]:
        assert {"code", "replicas", "workers", "resources"} <= gw.keys()
        codes.append(ids.validate("gateway", gw["code"], "gateways[].code"))
        assert {"requests", "limits"} <= gw["resources"].keys()
    assert len(codes) == len(set(codes))
    from connectors.cli import definition

    for connector in values["connectors"]:
        assert definition(connector["name"]) is not None  # a connector `lienthong connector serve` knows
        assert connector["gateway"] in codes, f"{connector['name']} names an unknown gateway"
        assert {"name", "key"} <= connector["databaseSecret"].keys()
    assert values["redis"]["embedded"]["enabled"] or values["redis"]["url"]


def test_files_the_templates_read_exist() -> None:
    for template in TEMPLATES:
        for name in re.findall(r'\.Files\.Get\s+"([^"]+)"', template.read_text()):
            assert (CHART / name).is_file(), f"{template.name} reads {name}"


# --------------------------------------------------------------------------------------------------- CLI flags


@dataclass
class ServeCall:
    template: str
    items: list[str]  # the args list as written, template actions included
    env: set[str]  # names of the container's environment variables

    @property
    def command(self) -> tuple[str, str]:
        return self.items[0], self.items[1]

    def value(self, flag: str) -> str:
        return self.items[self.items.index(flag) + 1]


def lienthong_calls() -> list[ServeCall]:
    """Every `command: ["lienthong"]` container in the templates (init containers too) with its args and env names."""
    calls = []
    for template in TEMPLATES:
        lines = template.read_text().splitlines()
        for i, line in enumerate(lines):
            if line.strip() != 'command: ["lienthong"]':
                continue
            indent = len(line) - len(line.lstrip())
            items: list[str] = []
            env: set[str] = set()
            section = None
            for follow in lines[i + 1 :]:
                stripped = follow.strip()
                depth = len(follow) - len(follow.lstrip())
                if (stripped and depth < indent) or (depth == indent and stripped.startswith("- ")):
                    break  # the container ended
                if depth == indent and stripped.endswith(":"):
                    section = stripped[:-1]
                elif section == "args" and stripped.startswith("- "):
                    items.append(stripped[2:].strip().strip('"'))
                elif section == "env" and stripped.startswith("- name:"):
                    env.add(stripped.split(":", 1)[1].strip())
            calls.append(ServeCall(template.name, items, env))
    return calls


@dataclass
class HelpOption:
    takes_value: bool
    required: bool


def serve_calls() -> list[ServeCall]:
    return [c for c in lienthong_calls() if c.items[1] == "serve"]


def help_options(commands: list[tuple[str, str]]) -> dict[tuple[str, str], dict[str, HelpOption]]:
    """The options of each `lienthong GROUP COMMAND`, read from the real --help output (run side by side)."""
    procs = {c: subprocess.Popen(lienthong(*c, "--help"), stdout=subprocess.PIPE, text=True) for c in commands}
    found = {}
    for command, proc in procs.items():
        stdout, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, f"lienthong {' '.join(command)} --help failed"
        found[command] = _parse_help(stdout)
    return found


def _parse_help(text: str) -> dict[str, HelpOption]:
    entries: list[str] = []
    for line in text.split("Options:", 1)[1].splitlines():
        if re.match(r"^\s{2}(-\w, )?--", line):
            entries.append(line)
        elif entries:
            entries[-1] += " " + line.strip()
    options = {}
    for entry in entries:
        m = re.match(r"^\s*(?:-\w, )?(--[a-z0-9-]+)(?: ([A-Z]+))?", entry)
        assert m, entry
        options[m.group(1)] = HelpOption(m.group(2) is not None, "[required]" in entry)
    return options


def test_every_flag_in_the_templates_exists_in_the_real_cli() -> None:
    calls = lienthong_calls()
    commands = sorted({c.command for c in calls})
    assert commands == [("connector", "cert"), ("connector", "serve"), ("gateway", "cert"), ("gateway", "serve"),
                        ("registry", "serve")], commands  # fmt: skip
    helps = help_options(commands)
    assert "--registry-key" in helps["gateway", "serve"] and "--registry-key" not in helps["registry", "serve"]
    for call in calls:
        options = helps[call.command]
        passed = call.items  # an {{ if }} around a flag is its own line, not a list item
        flags = [item.split("=", 1)[0] for item in passed if item.startswith("--")]
        unknown = [f for f in flags if f not in options]
        assert unknown == [], f"{call.template}: {call.items[0]} serve has no {unknown}"
        missing = [name for name, opt in options.items() if opt.required and name not in flags]
        assert missing == [], f"{call.template}: {call.items[0]} serve needs {missing}"
        for k, item in enumerate(passed):
            if item in options and options[item].takes_value and "=" not in item:
                value = passed[k + 1] if k + 1 < len(passed) else "--"
                assert not value.startswith("--"), f"{call.template}: {item} has no value"
        for var in re.findall(r"\$\((\w+)\)", " ".join(call.items)):
            assert var in call.env, f"{call.template}: $({var}) in args but not in the container's env"


def test_connector_names_are_a_positional_choice() -> None:
    calls = [c for c in serve_calls() if c.items[0] == "connector"]
    assert len(calls) == 1
    # the NAME argument comes from the values' connector names, which test_chart_and_values_parse checks
    assert calls[0].items[2].startswith("{{") and "$c.name" in calls[0].items[2]


# --------------------------------------------------------------------------------------------- pod conventions


def test_pods_are_locked_down_and_gateways_scraped_and_probed() -> None:
    texts = {t.name: t.read_text() for t in TEMPLATES}
    for name in ("registry.yaml", "gateways.yaml", "connectors.yaml"):
        assert 'include "lienthong.podSpecCommon"' in texts[name], name
        assert "toYaml $.Values.containerSecurityContext" in texts[name] or (
            "toYaml .Values.containerSecurityContext" in texts[name]
        ), name
    helpers = texts["_helpers.tpl"]
    assert "enableServiceLinks: false" in helpers and "enableServiceLinks: false" in texts["redis.yaml"]
    gateways = texts["gateways.yaml"]
    assert 'prometheus.io/scrape: "true"' in gateways
    assert re.search(r"readinessProbe:\s+httpGet:\s+path: /readyz", gateways)
    assert re.search(r"livenessProbe:\s+httpGet:\s+path: /healthz", gateways)
    assert "--appendonly" in texts["redis.yaml"] and '"yes"' in texts["redis.yaml"]
    # the probes ask the port that takes /r1 calls; Prometheus scrapes the ops port, where /metrics needs no token
    assert re.search(r"readinessProbe:\s+httpGet:\s+path: /readyz\s+port: https\s+scheme: HTTPS\n", gateways)
    assert "prometheus.io/port: {{ $defaults.opsPort | quote }}" in gateways
    assert re.search(r"- port: ops\b.*\n\s+path: /metrics", texts["podmonitor.yaml"])
    # the pod label the dashboard groups by, as Prometheus sanitizes it, and the PodMonitor carries it over
    pod_label = re.search(r"^\s+(lienthong-gateway): ", gateways, re.M)
    assert pod_label is not None and re.sub(r"\W", "_", pod_label.group(1)) == "lienthong_gateway"
    assert "- lienthong-gateway" in texts["podmonitor.yaml"]
    dashboard_map = texts["grafana-dashboard.yaml"]
    assert 'grafana_dashboard: "1"' in dashboard_map and ".Values.grafana.dashboard.enabled" in dashboard_map


# --------------------------------------------------------------------------------------------------- dashboard


def exported_series() -> dict[str, set[str]]:
    """Sample names a gateway exposes at /metrics, each with its label names, as prometheus-client renders them.

    Each collector of gateway/metrics.py is rebuilt with the same name, type and labels in a fresh registry, given
    one child, and rendered, so the suffixes are the library's own. `_created` is left out: the gateway runs in
    multiprocess mode, whose collector does not emit it.
    """
    registry = CollectorRegistry()
    # pre-bound label children (UPSTREAM.labels("connector")) are the same series as their parent: skip them
    collectors = [v for v in vars(gateway_metrics).values() if isinstance(v, MetricWrapperBase) and not v._labelvalues]
    assert len(collectors) >= 5
    for collector in collectors:
        name = next(iter(collector.describe())).name
        labelnames = list(collector._labelnames)
        clone: MetricWrapperBase
        if isinstance(collector, Counter):
            clone = Counter(name, "d", labelnames, registry=registry)
            child = clone.labels(*labelnames) if labelnames else clone
            child.inc()
        elif isinstance(collector, Histogram):
            clone = Histogram(name, "d", labelnames, registry=registry)
            (clone.labels(*labelnames) if labelnames else clone).observe(0.1)
        elif isinstance(collector, Gauge):
            clone = Gauge(name, "d", labelnames, registry=registry)
            (clone.labels(*labelnames) if labelnames else clone).set(1)
        else:
            raise AssertionError(f"unexpected collector type {type(collector)}")
    series: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            if not sample.name.endswith("_created"):
                series.setdefault(sample.name, set()).update(sample.labels)
    return series


def promql_references(expr: str) -> tuple[dict[str, set[str]], set[str]]:
    """Metric names in a PromQL expression with the labels its selectors name, and the grouping labels."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\[[^\]]*\]", "", text)
    grouping: set[str] = set()
    for m in re.finditer(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)", text):
        grouping |= {label.strip() for label in m.group(1).split(",") if label.strip()}
    text = re.sub(r"\b(?:by|without|on|ignoring)\s*\([^)]*\)", " ", text)
    metrics: dict[str, set[str]] = {}

    def selector(m: re.Match[str]) -> str:
        labels = set(re.findall(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)", m.group(2)))
        metrics.setdefault(m.group(1), set()).update(labels)
        return " "

    text = re.sub(r"([A-Za-z_:][\w:]*)\s*\{([^}]*)\}", selector, text)
    for m in re.finditer(r"(?<![\w$.])([A-Za-z_:][\w:]*)(?![\w:])(?!\s*\()", text):
        if m.group(1) not in PROMQL_KEYWORDS:
            metrics.setdefault(m.group(1), set())
    return metrics, grouping


def test_promql_reader_finds_names_and_labels() -> None:
    metrics, grouping = promql_references(
        'histogram_quantile(0.95, sum by (le, role) (rate(a_bucket{x=~"$g", y!=""}[$__rate_interval])))'
        " / sum(rate(b_total[5m])) - time() + max by (z) (c)"
    )
    assert metrics == {"a_bucket": {"x", "y"}, "b_total": set(), "c": set()}
    assert grouping == {"le", "role", "z"}


def _expressions(dashboard: dict[str, Any]) -> list[str]:
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        query = variable.get("query")
        text = query.get("query") if isinstance(query, dict) else query
        if variable["type"] == "query" and text:
            # label_values(METRIC, LABEL) asks for the same thing as this PromQL
            exprs.append(re.sub(r"^label_values\((.*),\s*(\w+)\)$", r"count by (\2) (\1)", text))
    return exprs


def test_dashboard_queries_only_exported_metrics_and_labels() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["schemaVersion"] >= 36
    assert [i["name"] for i in dashboard["__inputs"]] == ["DS_PROMETHEUS"]
    for panel in dashboard["panels"]:
        if "datasource" in panel:
            assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
    series = exported_series()
    used: set[str] = set()
    problems = []
    for expr in _expressions(dashboard):
        metrics, grouping = promql_references(expr)
        assert metrics, expr
        known_labels = set(TARGET_LABELS)
        for name, labels in metrics.items():
            if name not in series:
                problems.append(f"{name} is not exported (in {expr})")
                continue
            used.add(name)
            known_labels |= series[name]
            problems += [f"{name} has no label {label}" for label in labels - series[name] - TARGET_LABELS]
        problems += [f"no series of {expr} has label {label}" for label in grouping - known_labels]
    assert problems == []
    wanted = {
        "lienthong_gateway_requests_total", "lienthong_gateway_request_seconds_bucket",
        "lienthong_gateway_upstream_seconds_bucket", "lienthong_gateway_snapshot_version",
        "lienthong_gateway_snapshot_confirmed_timestamp_seconds",
    }  # fmt: skip
    assert wanted <= used


def test_exported_series_follow_prometheus_client_suffixes() -> None:
    series = exported_series()
    assert "lienthong_gateway_requests_total" in series and "lienthong_gateway_requests" not in series
    assert {"role", "status", "error"} <= series["lienthong_gateway_requests_total"]
    assert "le" in series["lienthong_gateway_request_seconds_bucket"]
    assert "lienthong_gateway_upstream_seconds_count" in series


def test_gateways_serve_the_ops_api_and_metrics_on_their_own_port() -> None:
    """--ops-listen on gatewayDefaults.opsPort, a container port and a Service port named ops for it, apart from the
    port of /r1 calls (issue 13: the operations API is not on the data plane's address)."""
    values = _values()["gatewayDefaults"]
    assert values["opsPort"] != values["port"]
    (call,) = [c for c in serve_calls() if c.items[0] == "gateway"]
    at = call.items.index("--ops-listen")
    assert call.items[at + 1] == '{{ printf "0.0.0.0:%v" $defaults.opsPort | quote }}'
    gateways = (CHART / "templates" / "gateways.yaml").read_text()
    assert re.search(r"- name: ops\n\s+containerPort: \{\{ \$defaults\.opsPort \}\}", gateways)
    assert re.search(r"- name: ops\n\s+port: \{\{ \$defaults\.opsPort \}\}\n\s+targetPort: ops", gateways)


def test_every_gateway_gets_the_one_mesh_wide_subject_key() -> None:
    """LIENTHONG_SUBJECT_KEY comes from one Secret named in gatewayDefaults, never per gateway: a gateway with another
    key would give the same person another pseudonym, and "who read this person" would miss its records."""
    (call,) = [c for c in serve_calls() if c.items[0] == "gateway"]
    assert SUBJECT_KEY_ENV in call.env
    gateways = (CHART / "templates" / "gateways.yaml").read_text()
    ref = re.search(
        rf"- name: {SUBJECT_KEY_ENV}\n\s+valueFrom:\n\s+secretKeyRef:\n\s+name: (.+)\n\s+key: (.+)\n", gateways
    )
    assert ref is not None
    assert "$defaults.subjectKeySecret.name" in ref.group(1) and "required" in ref.group(1)
    assert ref.group(2) == "{{ $defaults.subjectKeySecret.key | quote }}"
    values = _values()
    secret = values["gatewayDefaults"]["subjectKeySecret"]
    assert secret["name"] and secret["key"]
    assert all("subjectKeySecret" not in gw for gw in values["gateways"])
    # the chart README tells the operator how to make it, with a key the gateway accepts
    readme = (CHART / "README.md").read_text()
    assert secret["name"] in readme and "openssl rand -hex 32" in readme


def test_the_registry_allowlist_is_a_value_and_empty_by_default() -> None:
    """--upstream-allow is passed only when registry.upstreamAllow lists something; by default the upstream policy
    refuses loopback, metadata and the mesh's own endpoints with no exception."""
    assert _values()["registry"]["upstreamAllow"] == []
    (call,) = [c for c in serve_calls() if c.items[0] == "registry"]
    at = call.items.index("--upstream-allow")
    assert call.items[at + 1] == '{{ join "," . | quote }}'
    registry = (CHART / "templates" / "registry.yaml").read_text()
    assert re.search(r"\{\{- with \.Values\.registry\.upstreamAllow \}\}\n\s+- --upstream-allow\n", registry)


# ------------------------------------------------------------------------------------- TLS on every link (issue 14)


def _texts() -> dict[str, str]:
    return {t.name: t.read_text() for t in TEMPLATES}


def _define(name: str) -> str:
    """The body of {{ define NAME }} in _helpers.tpl, without its delimiters."""
    helpers = (CHART / "templates" / "_helpers.tpl").read_text()
    m = re.search(r'\{\{-? define "' + re.escape(name) + r'" -?\}\}\n?(.*?)\{\{-? end -?\}\}', helpers, re.S)
    assert m is not None, f"no define {name}"
    return m.group(1)


def _include(name: str, arg: str = r"\$?\.?") -> str:
    return r'\{\{ include "' + re.escape(name) + r'" ' + arg + r" \}\}"


def test_every_url_the_chart_gives_is_https() -> None:
    """No plain http:// anywhere in the chart (templates, values, README): the registry's URL, the connectors'
    public URLs, the gateways' base URLs in NOTES; and no process is started with --insecure-http."""
    for path in [*TEMPLATES, CHART / "values.yaml", CHART / "README.md"]:
        text = path.read_text()
        assert "http://" not in text, f"{path.name} has a plain http:// URL"
        assert "--insecure-http" not in text or path.name == "README.md", path.name
    national, province = _define("lienthong.registryUrl").split("{{- else -}}")
    assert national.strip().endswith(".Values.registry.url }}") and province.strip().startswith("https://")
    calls = lienthong_calls()
    registry_flags = [c.value("--registry") for c in calls if "--registry" in c.items]
    assert len(registry_flags) == 4  # gateway serve and cert, connector serve and cert
    assert all(v == '{{ include "lienthong.registryUrl" $ | quote }}' for v in registry_flags), registry_flags
    (connector,) = [c for c in serve_calls() if c.items[0] == "connector"]
    assert connector.value("--public-url").startswith('{{ printf "https://')
    notes = _texts()["NOTES.txt"]
    assert "--base-url https://" in notes and "--registry https://" in notes


def test_the_registry_reads_the_mesh_ca_from_its_secret_and_no_other_pod_names_it() -> None:
    """The registry's data dir is a projected volume: the keys Secret and the CA Secret's two items as ca.crt and
    ca.key (the names registry/mesh_ca.py loads). Its serving certificate goes to --tls-dir, a writable emptyDir
    unless registry.tlsSecret names one. No other template references the Secret holding the CA key."""
    (call,) = [c for c in serve_calls() if c.items[0] == "registry"]
    data_dir = call.value("--data-dir")
    assert call.value("--tls-dir") == '{{ include "lienthong.tlsDir" . }}'
    registry = _texts()["registry.yaml"]
    mount = re.search(r"- name: (\w+)\n\s+mountPath: " + re.escape(data_dir) + r"\n", registry)
    assert mount is not None, "nothing mounted at the registry's --data-dir"
    volume = re.search(r"- name: " + mount.group(1) + r"\n\s+projected:\n(.*?)\n        \{\{", registry, re.S)
    assert volume is not None, "the data dir is not a projected volume"
    body = volume.group(1)
    assert "name: {{ .Values.registry.keysSecret }}" in body
    ca = re.search(
        r"name: \{\{ \.Values\.pki\.caSecret\.name \}\}\n\s+items:\n"
        r"\s+- key: \{\{ \.Values\.pki\.caSecret\.certKey \}\}\n\s+path: (\S+)\n"
        r"\s+- key: \{\{ \.Values\.pki\.caSecret\.keyKey \}\}\n\s+path: (\S+)",
        body,
    )
    assert ca is not None, "the CA Secret's items are not in the registry's data dir"
    assert (ca.group(1), ca.group(2)) == (mesh_ca.CA_CERT, mesh_ca.CA_KEY)
    assert re.search(r"- name: tls\n\s+mountPath: " + _include("lienthong.tlsDir", r"\.") + r"\n", registry)
    assert '{{- include "lienthong.tlsVolume" .Values.registry.tlsSecret | nindent 8 }}' in registry
    for name, text in _texts().items():
        if name != "registry.yaml":
            assert "caSecret" not in text, f"{name} names the Secret that holds the CA key"
    values = _values()["pki"]
    assert values["caSecret"]["name"] and values["caConfigMap"]["name"]


def test_tls_volumes_hold_the_files_every_process_reads() -> None:
    """A TLS Secret's items land under the names pki.CertFiles reads (tls.key, tls.crt, ca.crt); without a Secret the
    directory is a writable emptyDir the process renews in; the mesh CA ConfigMap lands as ca.crt at meshCaFile."""
    files = pki.CertFiles(Path("d"))
    volume = _define("lienthong.tlsVolume")
    secret, _, empty = volume.partition("{{- else }}")
    for file in (files.key, files.cert, files.ca):
        assert re.search(rf"- key: {file.name}\n\s+path: {file.name}\n", secret), file.name
    assert "secretName: {{ . }}" in secret and "emptyDir:" in empty
    ca = _define("lienthong.meshCaVolume")
    assert "configMap:" in ca and "name: {{ .Values.pki.caConfigMap.name }}" in ca and "path: ca.crt" in ca
    assert _define("lienthong.meshCaFile").strip().endswith("/ca.crt")


@pytest.mark.parametrize(("template", "group", "item"), [("gateways.yaml", "gateway", "$gw"),
                                                          ("connectors.yaml", "connector", "$c")])  # fmt: skip
def test_certificates_are_issued_at_start_unless_a_secret_holds_them(template: str, group: str, item: str) -> None:
    """Without ITEM.tlsSecret an init container runs `lienthong GROUP cert` against the registry (https, verified
    with the mesh CA from the ConfigMap), signing with the key the process itself uses, into the --tls-dir the
    process serves from (and renews in); with it, the Secret is mounted there read-only and no init container runs."""
    text = _texts()[template]
    (cert,) = [c for c in lienthong_calls() if c.template == template and c.command == (group, "cert")]
    (serve,) = [c for c in serve_calls() if c.template == template]
    assert re.search(r"\{\{- if not " + re.escape(item) + r"\.tlsSecret \}\}\n\s+initContainers:\n", text)
    assert cert.value("--tls-dir") == serve.value("--tls-dir") == '{{ include "lienthong.tlsDir" $ }}'
    assert cert.value("--registry") == serve.value("--registry")
    assert cert.value("--registry-ca") == '{{ include "lienthong.meshCaFile" $ }}'
    assert cert.value("--key") == serve.value("--key")
    if group == "gateway":
        assert cert.value("--code") == serve.value("--code")
    else:
        assert cert.items[2] == serve.items[2]  # the connector's NAME
        assert cert.value("--kid") == serve.value("--kid") and "LIENTHONG_CONNECTOR_KID" in cert.env
        assert cert.value("--subsystem") == "{{ $c.subsystem | quote }}"
        assert serve.value("--registry-ca") == cert.value("--registry-ca")
    # the init container mounts what it reads and writes; the process mounts the same tls volume
    init = text[text.index("initContainers:") : text.index("      containers:")]
    for volume in ("tls", "mesh-ca", "tmp"):
        assert f"- name: {volume}\n" in init, f"the init container lacks {volume}"
    assert re.search(r"- name: tls\n\s+mountPath: " + _include("lienthong.tlsDir", r"\$") + r"\n"
                     r"\s+\{\{- if " + re.escape(item) + r"\.tlsSecret \}\}\n\s+readOnly: true\n", text)  # fmt: skip
    assert '{{- include "lienthong.tlsVolume" ' + item + ".tlsSecret | nindent 8 }}" in text
    assert '{{- include "lienthong.meshCaVolume" $ | nindent 8 }}' in text
    values = _values()["gateways" if group == "gateway" else "connectors"]
    assert all(entry["tlsSecret"] == "" for entry in values)  # issued at start by default


def test_each_connector_names_the_subsystem_its_certificate_must_carry() -> None:
    """connectors[].subsystem is the provider subsystem of that connector's definition: `connector serve` refuses a
    certificate for any other, and the hosting gateway expects exactly that one."""
    from connectors.cli import definition

    for connector in _values()["connectors"]:
        assert connector["subsystem"] == definition(connector["name"]).subsystem, connector["name"]


def _probes(text: str) -> list[tuple[str, str]]:
    """Each probe of a template as (kind, its block)."""
    found = []
    for m in re.finditer(r"^( +)(readinessProbe|livenessProbe|startupProbe):\n((?:\1 .*\n)+)", text, re.M):
        found.append((m.group(2), m.group(3)))
    return found


def test_every_http_probe_speaks_https() -> None:
    """The kubelet probes the registry and the gateways over HTTPS (it does not verify their certificates, and their
    client certificate is optional). Connectors require their hosting gateway's client certificate in the handshake,
    which the kubelet has not: they are probed over TCP, never with a plaintext or certless HTTP probe."""
    texts = _texts()
    https = 0
    for name in ("registry.yaml", "gateways.yaml", "connectors.yaml"):
        probes = _probes(texts[name])
        assert probes, name
        for kind, block in probes:
            if "httpGet:" in block:
                assert re.search(r"\n\s+scheme: HTTPS\n", block), f"{name} {kind} is plain HTTP"
                assert name != "connectors.yaml", "a connector answers no certless HTTPS probe"
                https += 1
            else:
                assert "tcpSocket:" in block, f"{name} {kind}"
    assert https >= 4


def test_prometheus_scrapes_the_ops_port_over_https() -> None:
    """--ops-listen serves TLS like the main port: the scrape annotations and the PodMonitor say https."""
    texts = _texts()
    assert "prometheus.io/scheme: https" in texts["gateways.yaml"]
    monitor = texts["podmonitor.yaml"]
    assert re.search(r"- port: ops\b.*\n\s+path: /metrics\n(?:\s+#.*\n)?\s+scheme: https\n", monitor)
    assert "{{- with .Values.metrics.podMonitor.tlsConfig }}" in monitor
    assert _values()["metrics"]["podMonitor"]["tlsConfig"]


def test_readme_says_how_to_run_with_an_existing_ca_and_how_certificates_are_renewed() -> None:
    readme = (CHART / "README.md").read_text()
    values = _values()["pki"]
    assert "--ca-cert" in readme and "--ca-key" in readme
    assert f"kubectl create secret generic {values['caSecret']['name']}" in readme
    assert f"kubectl create configmap {values['caConfigMap']['name']}" in readme
    for word in ("lienthong gateway cert", "lienthong connector cert", "two thirds", "tlsSecret", "cert-manager"):
        assert word in readme, word


# ---------------------------------------------------------------------- the chart's commands, run as its pods do


def chart_argv(
    call: ServeCall, actions: dict[str, str | None], root: Path, env: dict[str, str] | None = None,
    unset: tuple[str, ...] = (),
) -> list[str]:  # fmt: skip
    """A template container's args as its pod runs them: each template action replaced from `actions` (None drops it
    and the flag before it), $(VAR) from the container's `env` as Kubernetes expands it, and every absolute path (the
    chart's mounts) moved under `root`, the pod's filesystem. `unset`: flags whose {{ if }} is false, with their value.
    """
    argv: list[str] = []
    items = list(call.items)
    for flag in unset:
        at = items.index(flag)
        del items[at : at + 2]
    for item in items:
        item = re.sub(r"\$\((\w+)\)", lambda m: (env or {})[m.group(1)], item)
        if "{{" in item:
            assert item in actions, f"{call.template}: no value for {item}"
            value = actions[item]
            if value is None:
                argv.pop()
                continue
            item = value
        argv.append(str(root / item.lstrip("/")) if item.startswith("/") else item)
    return argv


def _mount(directory: Path, files: dict[str, Path]) -> Path:
    """A Secret or ConfigMap volume: the files copied under their item names, read-only (0440 in a 0555 dir)."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, source in files.items():
        (directory / name).write_bytes(source.read_bytes())
        (directory / name).chmod(0o440)
    directory.chmod(0o555)
    return directory


def _wait_https(url: str, ca: Path, proc: Proc) -> None:
    deadline = time.monotonic() + 60  # only catches a hang
    with httpx.Client(verify=pki.client_context(ca), timeout=2) as client:
        while True:
            if proc.process is not None and proc.process.poll() is not None:
                raise AssertionError(f"{proc.name} exited:\n{proc.log_tail()}")
            try:
                if client.get(url).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, f"{url} did not answer:\n{proc.log_tail()}"
            time.sleep(0.2)


def _run_init(argv: list[str], pod: Path, env: dict[str, str] | None = None) -> None:
    done = subprocess.run(lienthong(*argv), capture_output=True, text=True, timeout=120,
                          env={**os.environ, "HOME": str(pod / "tmp"), **(env or {})})  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


def _init_pod(pod: Path, secret_dir: str, secret_files: dict[str, Path], ca: Path, tls_dir: str) -> str:
    """An init container's filesystem: its key Secret, the CA ConfigMap, the tls emptyDir and /tmp. Returns the
    mesh CA file's path in the pod."""
    _mount(pod / secret_dir.lstrip("/"), secret_files)
    ca_file = _define("lienthong.meshCaFile").strip()
    _mount((pod / ca_file.lstrip("/")).parent, {"ca.crt": ca})
    for empty in (tls_dir, "/tmp"):
        (pod / empty.lstrip("/")).mkdir(parents=True)
    return ca_file


def _issued(pod: Path, tls_dir: str, identity: str, ca: pki.CertificateAuthority) -> None:
    """The init container left a certificate for `identity` from `ca`, its key 0600 and the CA beside it."""
    files = pki.CertFiles(pod / tls_dir.lstrip("/"))
    cert = pki.load_cert(files.cert)
    assert pki.cert_identity(cert) == identity
    cert.verify_directly_issued_by(ca.cert)
    assert pki.load_cert(files.ca) == ca.cert
    assert files.key.stat().st_mode & 0o077 == 0


def _gateway_serves_its_probes_over_https(
    pod: Path, keys_dir: Path, common: dict[str, str | None], redis_url: str, log_dir: Path, ca: Path
) -> None:
    """The gateway container after its init container, with the template's arguments: the kubelet's probes (HTTPS,
    no client certificate) answer on the main port, Prometheus's scrape on the ops port, and plain HTTP is refused."""
    _mount(pod / "etc/lienthong/registry", {"registry.pub.jwk": keys_dir / "registry.pub.jwk"})
    (pod / "var/lib/lienthong/gateway").mkdir(parents=True)  # the data volume
    (call,) = [c for c in serve_calls() if c.items[0] == "gateway"]
    port, ops = free_port(), free_port()
    actions: dict[str, str | None] = {
        **common, "{{ $gw.code | quote }}": "national", "{{ $gw.kid | quote }}": None, "{{ $host | quote }}": None,
        "{{ $defaults.port | quote }}": str(port), "{{ $gw.workers | quote }}": "1",
        '{{ printf "0.0.0.0:%v" $defaults.opsPort | quote }}': f"127.0.0.1:{ops}",
    }  # fmt: skip
    values = _values()["gatewayDefaults"]
    for key in ("maxSnapshotAge", "policies", "bodyLimit", "traceSampleRatio", "breakerFailures", "breakerOpenSeconds"):
        actions[next(i for i in call.items if f"$defaults.{key} " in i)] = str(values[key])
    argv = chart_argv(call, actions, pod, unset=("--ops-operator-key",))
    argv[argv.index("--host") + 1] = "127.0.0.1"
    env = {"REDIS_URL": redis_url, "LIENTHONG_SUBJECT_KEY": "ab" * 32, "HOME": str(pod / "tmp")}
    gateway = Proc("gateway", lienthong(*argv), log_dir, env=env)
    gateway.start()
    try:
        _wait_https(f"https://127.0.0.1:{port}/healthz", ca, gateway)  # the startup and liveness probes
        with httpx.Client(verify=pki.client_context(ca), timeout=10) as client:
            scrape = client.get(f"https://127.0.0.1:{ops}/metrics")
            assert scrape.status_code == 200 and "lienthong_gateway" in scrape.text
        plain = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10)
        assert plain.status_code == 400 and "https://" in plain.text  # a probe without scheme: HTTPS would fail
    finally:
        gateway.stop()


def test_the_registry_and_the_init_containers_run_as_the_chart_starts_them(
    tmp_path: Path, redis_url: str, log_dir: Path
) -> None:
    """With an operator's existing CA: `registry init --ca-cert --ca-key` on the operator's machine, the keys Secret
    and the CA Secret mounted read-only as the registry's data dir, an empty TLS directory. The registry, started with
    the template's own arguments, issues its serving certificate from that CA and serves HTTPS; the gateway's and a
    connector's init containers, with their templates' arguments, get their certificates from it into the directory
    the process serves from, verifying the registry with the CA ConfigMap's certificate alone, once the registry
    holds the key each signs with."""
    operator = tmp_path / "operator"
    existing = pki.CertificateAuthority.create(operator / "our-ca.crt", operator / "our-ca.key", "Bộ TT&TT CA")
    subprocess.run(lienthong("registry", "init", "--data-dir", str(operator / "registry"), "--ca-cert",
                             str(operator / "our-ca.crt"), "--ca-key", str(operator / "our-ca.key")),
                   check=True, capture_output=True)  # fmt: skip
    keys_dir = operator / "registry"
    subprocess.run(lienthong("gateway", "keygen", "--code", "national", "--data-dir", str(operator / "national")),
                   check=True, capture_output=True)  # fmt: skip

    # the registry pod: its data dir is the keys Secret and the CA Secret's items, projected read-only
    pod = tmp_path / "registry-pod"
    data_dir = pod / "etc/lienthong/registry"
    _mount(data_dir, {**{n: keys_dir / n for n in ("registry.key", "registry.pub.jwk", "admin.pub.jwk")},
                      mesh_ca.CA_CERT: operator / "our-ca.crt", mesh_ca.CA_KEY: operator / "our-ca.key"})  # fmt: skip
    tls_dir = _define("lienthong.tlsDir").strip()
    (pod / tls_dir.lstrip("/")).mkdir(parents=True)  # the emptyDir
    (call,) = [c for c in serve_calls() if c.items[0] == "registry"]
    port = free_port()
    argv = chart_argv(call, {"{{ .Values.registry.port | quote }}": str(port),
                             '{{ include "lienthong.tlsDir" . }}': tls_dir, '{{ join "," . | quote }}': None},
                      pod)  # fmt: skip
    argv[argv.index("--host") + 1] = "127.0.0.1"  # the pod's 0.0.0.0, kept off the test machine's interfaces
    assert argv[argv.index("--data-dir") + 1] == str(data_dir)
    registry = Proc("registry", lienthong(*argv), log_dir, env={"REDIS_URL": redis_url, "HOME": str(tmp_path)})
    registry.start()
    try:
        url = f"https://127.0.0.1:{port}"
        _wait_https(url + "/healthz", operator / "our-ca.crt", registry)
        own = pki.load_cert(pki.CertFiles(pod / tls_dir.lstrip("/")).cert)
        assert pki.cert_identity(own) == mesh_ca.REGISTRY_IDENTITY
        own.verify_directly_issued_by(existing.cert)

        jwk = json.loads((operator / "national" / "gateway.jwk").read_text())
        admin = RegistryClient(url, keys_dir / "admin.key", keyfiles.admin_kid(keys_dir), "admin",
                               ca=operator / "our-ca.crt")  # fmt: skip
        try:
            admin.add_gateway("national", "https://lienthong-gateway-national.lienthong.svc:8700", [jwk])
        finally:
            admin.close()

        # the gateway pod's init container
        gw_pod = tmp_path / "gateway-pod"
        ca_file = _init_pod(gw_pod, "/etc/lienthong/gateway", {"gateway.key": operator / "national" / "gateway.key"},
                            operator / "our-ca.crt", tls_dir)  # fmt: skip
        common: dict[str, str | None] = {
            '{{ include "lienthong.tlsDir" $ }}': tls_dir, '{{ include "lienthong.meshCaFile" $ }}': ca_file,
            '{{ include "lienthong.registryUrl" $ | quote }}': url,
        }  # fmt: skip
        (init,) = [c for c in lienthong_calls() if c.command == ("gateway", "cert")]
        _run_init(chart_argv(init, {**common, "{{ $gw.code | quote }}": "national", "{{ $gw.kid | quote }}": None},
                             gw_pod), gw_pod)  # fmt: skip
        _issued(gw_pod, tls_dir, pki.identity("gateway", "national"), existing)
        _gateway_serves_its_probes_over_https(gw_pod, keys_dir, common, redis_url, log_dir, operator / "our-ca.crt")

        # a connector pod's init container, once its provider subsystem's client key is in the registry
        connector = _values()["connectors"][0]
        subsystem = connector["subsystem"]
        client_key = keys.generate()
        keys.save_private(client_key, operator / "client.key")
        client_jwk = keys.public_jwk(client_key)
        admin = RegistryClient(url, keys_dir / "admin.key", keyfiles.admin_kid(keys_dir), "admin",
                               ca=operator / "our-ca.crt")  # fmt: skip
        try:
            admin.add_member(subsystem.rsplit("/", 1)[0], "Bộ Công an", connector["gateway"])
            admin.add_subsystem(subsystem, connector["name"])
            admin.add_client_key(subsystem, client_jwk)
        finally:
            admin.close()
        c_pod = tmp_path / "connector-pod"
        _init_pod(c_pod, "/etc/lienthong/connector", {"client.key": operator / "client.key"},
                  operator / "our-ca.crt", tls_dir)  # fmt: skip
        (init,) = [c for c in lienthong_calls() if c.command == ("connector", "cert")]
        env = {"LIENTHONG_CONNECTOR_KID": client_jwk["kid"]}  # from the key Secret's item kid
        argv = chart_argv(init, {**common, "{{ $c.name | quote }}": connector["name"],
                                 "{{ $c.subsystem | quote }}": subsystem}, c_pod, env)  # fmt: skip
        _run_init(argv, c_pod, env)
        _issued(c_pod, tls_dir, pki.identity("subsystem", subsystem), existing)
    finally:
        registry.stop()


# ------------------------------------------------------------------------------------------- values.schema.json


def _schema() -> dict[str, Any]:
    loaded = json.loads((CHART / "values.schema.json").read_text())
    assert isinstance(loaded, dict)
    return loaded


def _schema_errors(values: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft7Validator(_schema())
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(values)]


def _undescribed(node: Any, schema: dict[str, Any], path: str) -> list[str]:
    """Keys of values.yaml that the schema does not name, where it names its properties."""
    missing = []
    if isinstance(node, dict) and "properties" in schema:
        for key, value in node.items():
            if key not in schema["properties"]:
                missing.append(f"{path}.{key}")
            else:
                missing += _undescribed(value, schema["properties"][key], f"{path}.{key}")
    elif isinstance(node, list) and "items" in schema:
        for k, item in enumerate(node):
            missing += _undescribed(item, schema["items"], f"{path}[{k}]")
    return missing


def test_values_follow_the_schema_and_the_schema_names_every_value() -> None:
    jsonschema.Draft7Validator.check_schema(_schema())  # helm validates values with it at install and upgrade
    values = _values()
    assert _schema_errors(values) == []
    assert _undescribed(values, _schema(), "") == []


@pytest.mark.parametrize(
    ("change", "where"),
    [
        (lambda v: v["pki"]["caSecret"].update(name=""), "pki.caSecret.name"),
        (lambda v: v["pki"].pop("caConfigMap"), "pki"),
        (lambda v: v["registry"].update(tlsSecret=True), "registry.tlsSecret"),
        (lambda v: v["gateways"][0].update(tlsSecret=None), "gateways.0.tlsSecret"),
        (lambda v: v["gateways"][0].update(tlsSecrets="x"), "gateways.0"),
        (lambda v: v["connectors"][0].pop("subsystem"), "connectors.0"),
        (lambda v: v["connectors"][1].update(subsystem="VN/GOV/BTC"), "connectors.1.subsystem"),
        (lambda v: v["connectors"][2].update(tlsSecret=["a"]), "connectors.2.tlsSecret"),
        (lambda v: v["metrics"]["podMonitor"].update(tlsConfig="skip"), "metrics.podMonitor.tlsConfig"),
    ],
)
def test_the_schema_refuses_bad_tls_values(change: Any, where: str) -> None:
    values = _values()
    change(values)
    errors = _schema_errors(values)
    assert errors and all(e.startswith(where + ":") or e.startswith(where + ".") for e in errors), errors


@settings(max_examples=300, deadline=None)
@given(st.one_of(
    st.sampled_from(["VN/GOV/BCA/population", "VN/PROV/NGHEAN/civil-status", "VN/GOV/BCA", "XX/GOV/A/b",
                     "VN/GOV/BCA/a/b", "VN/FOO/A/b", "VN/GOV/-a/b", "VN/GOV/a./b"]),
    st.builds(lambda a, b, c: f"VN/{a}/{b}/{c}", st.sampled_from(["GOV", "PROV", "gov"]),
              st.from_regex(r"[A-Za-z0-9._:%-]{0,66}", fullmatch=True),
              st.from_regex(r"[A-Za-z0-9._/-]{0,66}", fullmatch=True)),
))  # fmt: skip
def test_the_schemas_subsystem_pattern_is_the_meshs_rule(subsystem: str) -> None:
    """A connector's subsystem passes the schema exactly when the mesh takes it as a subsystem identifier."""
    pattern = _schema()["properties"]["connectors"]["items"]["properties"]["subsystem"]["pattern"]
    try:
        ids.validate("subsystem", subsystem)
        valid = True
    except ids.InvalidIdentifier:
        valid = False
    assert (re.search(pattern, subsystem) is not None) == valid


# ------------------------------------------------------------------------- the manifests' shape, both branches at once

_CONTROL = re.compile(r"^(?:\{\{-?\s*(?:(?:if|else|end|with|range|define|fail)\b|\$\w+\s*:=).*?-?\}\}\s*)+$")
_NINDENT = re.compile(r'^\s*\{\{-?\s*(?:include\s+"([\w.]+)"\s+\S+|toYaml\s+\S+)\s*\|\s*nindent\s+(\d+)\s*-?\}\}$')
_INDENT = re.compile(r"^\s*\{\{-?\s*.*\|\s*indent\s+(\d+)\s*-?\}\}$")


def _helpers() -> dict[str, str]:
    text = (CHART / "templates" / "_helpers.tpl").read_text()
    return dict(re.findall(r'\{\{-? define "([\w.]+)" -?\}\}\n?(.*?)\{\{-? end -?\}\}\n', text, re.S))


def shape(text: str, helpers: dict[str, str]) -> str:
    """The template with every block's branches all kept, control actions dropped, `include | nindent N` replaced by
    the helper's own shape indented N, `toYaml | nindent N` by a one-key mapping, other actions by X: plain YAML
    whose nesting is the template's, so that its structure can be parsed and checked without helm."""
    text = re.sub(r"\{\{-?\s*/\*.*?\*/\s*-?\}\}", "", text, flags=re.S)
    out: list[str] = []
    for line in text.splitlines():
        stripped = line.strip()
        if _CONTROL.match(stripped):
            continue
        nindent = _NINDENT.match(line)
        if nindent is not None:
            body = shape(helpers[nindent.group(1)], helpers) if nindent.group(1) else "shaped: 1"
            out += [" " * int(nindent.group(2)) + b for b in body.splitlines() if b.strip()]
            continue
        indent = _INDENT.match(line)
        if indent is not None:
            out.append(" " * int(indent.group(1)) + "X")
            continue
        out.append(re.sub(r"\{\{.*?\}\}", "X", line))
    return "\n".join(out) + "\n"


def manifests() -> list[dict[str, Any]]:
    """The documents helm/render.py renders for the default values, both profiles, and the default values with every
    certificate from a Secret (the other branch of each tlsSecret)."""
    docs = []
    with_secrets = _render.values_for([])
    for entry in [*with_secrets["gateways"], *with_secrets["connectors"]]:
        entry["tlsSecret"] = "tls-" + entry.get("code", entry.get("name", ""))
    for values in (_render.values_for([]), *(_render.values_for([p]) for p in PROFILES.values()), with_secrets):
        docs += _documents(_render.render(values))
    return docs


def test_shape_keeps_the_nesting() -> None:
    helpers = {"v": "- name: v\n{{- if . }}\n  secret:\n    secretName: {{ . }}\n{{- else }}\n"
                    "  emptyDir: {}\n{{- end }}\n"}  # fmt: skip
    text = ("spec:\n  volumes:\n    {{- include \"v\" $x | nindent 4 }}\n    - name: t\n"
            "  c:\n    {{- toYaml .a | nindent 4 }}\n")  # fmt: skip
    assert yaml.safe_load(shape(text, helpers)) == {
        "spec": {"volumes": [{"name": "v", "secret": {"secretName": "X"}, "emptyDir": {}}, {"name": "t"}],
                 "c": {"shaped": 1}}
    }  # fmt: skip


def test_every_volume_a_container_mounts_is_in_its_pod() -> None:
    """Parsed from the templates' shape: each container and init container mounts only volumes its pod defines, and
    each pod defines no volume twice; the init containers write into the very volume the process serves from."""
    pods = [d for d in manifests() if d["kind"] in ("Deployment", "StatefulSet")]
    names = {p["metadata"]["name"] for p in pods}
    assert names >= {"lienthong-registry", "lienthong-gateway-nghean", "lienthong-redis"}
    checked = 0
    for pod in pods:
        spec = pod["spec"]["template"]["spec"]
        claims = [t["metadata"]["name"] for t in pod["spec"].get("volumeClaimTemplates", [])]
        volumes = [v["name"] for v in spec.get("volumes", [])]
        assert len(volumes) == len(set(volumes)), volumes
        for container in [*spec.get("initContainers", []), *spec["containers"]]:
            for mount in container.get("volumeMounts", []):
                assert mount["name"] in volumes or mount["name"] in claims, (container["name"], mount["name"])
                checked += 1
        for init in spec.get("initContainers", []):
            tls = [m["mountPath"] for m in init["volumeMounts"] if m["name"] == "tls"]
            served = [m["mountPath"] for c in spec["containers"] for m in c["volumeMounts"] if m["name"] == "tls"]
            assert tls and tls == served, pod["metadata"]["name"]
    assert checked > 20


# ------------------------------------------------------------------ rendered: a nation, one province (issue 16)


def _documents(rendered: dict[str, str]) -> list[dict[str, Any]]:
    return [d for text in rendered.values() for d in yaml.safe_load_all(text) if d]


@pytest.fixture(scope="module")
def profiles() -> dict[str, list[dict[str, Any]]]:
    return {name: _documents(_render.render(_render.values_for([path]))) for name, path in PROFILES.items()}


def _named(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def _args(doc: dict[str, Any]) -> list[str]:
    return [a for c in doc["spec"]["template"]["spec"]["containers"] for a in c.get("args", [])]


def test_a_province_installs_no_registry_and_points_at_the_national_one(profiles: dict[str, Any]) -> None:
    """values-province.yaml: one gateway and its connectors; no registry Deployment, Service or NetworkPolicy; every
    --registry (serve and cert, gateway and connector) is the remote registry.url, verified with the mesh CA."""
    remote = yaml.safe_load(PROFILES["province"].read_text())["registry"]["url"]
    assert remote.startswith("https://")
    docs = profiles["province"]
    assert not any(d["metadata"]["name"].endswith("-registry") for d in docs)
    assert list(_named(docs, "StatefulSet")) == ["lienthong-gateway-nghean", "lienthong-redis"]
    assert list(_named(docs, "Deployment")) == ["lienthong-connector-civil-status"]
    pods = [*_named(docs, "StatefulSet").values(), *_named(docs, "Deployment").values()]
    registries = []
    for pod in pods:
        spec = pod["spec"]["template"]["spec"]
        for container in [*spec.get("initContainers", []), *spec["containers"]]:
            args = container.get("args", [])
            registries += [args[k + 1] for k, a in enumerate(args) if a == "--registry"]
    assert registries == [remote] * 4
    job = _args(_named(docs, "Job")["lienthong-bootstrap"])[0]
    assert f"--registry {remote} --registry-ca /etc/lienthong/mesh-ca/ca.crt" in job
    national = profiles["national"]
    assert "lienthong-registry" in _named(national, "Deployment")
    assert "lienthong-registry" in _named(national, "Service")
    (gateway,) = [d for n, d in _named(national, "StatefulSet").items() if "gateway" in n]
    assert "https://lienthong-registry:8600" in _args(gateway)


def test_a_province_without_the_registry_url_is_refused() -> None:
    """Both helm's schema check and the template itself refuse province mode with no registry.url."""
    values = _render.values_for([PROFILES["province"]])
    values["registry"]["url"] = ""
    assert any(e.startswith("registry.url:") for e in _schema_errors(values))
    with pytest.raises(_render.Fail, match=r"registry\.url"):
        _render.render(values)


def test_network_policies_deny_by_default_and_allow_the_mesh_links(profiles: dict[str, Any]) -> None:
    for name, docs in profiles.items():
        policies = _named(docs, "NetworkPolicy")
        deny = policies["lienthong-default-deny"]["spec"]
        assert deny["policyTypes"] == ["Ingress", "Egress"] and "ingress" not in deny
        assert deny["podSelector"]["matchLabels"]["app.kubernetes.io/instance"] == "lienthong"
        gateways = [g["code"] for g in yaml.safe_load(PROFILES[name].read_text())["gateways"]]
        for code in gateways:
            gw = policies[f"lienthong-gateway-{code}"]["spec"]
            mesh, scrape = gw["ingress"]
            assert [p["port"] for p in mesh["ports"]] == [8700] and [p["port"] for p in scrape["ports"]] == [8701]
            assert mesh["from"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "gateway"
            hosted = [r for r in gw["egress"] if "to" in r and "lienthong-hosted-by" in str(r["to"])]
            assert hosted[0]["to"][0]["podSelector"]["matchLabels"]["lienthong-hosted-by"] == code
            to_registry = [r for r in gw["egress"] if "component': 'registry'" in str(r.get("to"))]
            assert (to_registry != []) == (name == "national")  # a province reaches it through meshPeers
            assert gw["egress"][-1]["to"] == yaml.safe_load(PROFILES[name].read_text())["networkPolicy"]["meshPeers"]
        for connector in [d for n, d in _named(docs, "Deployment").items() if "-connector-" in n]:
            labels = connector["spec"]["template"]["metadata"]["labels"]
            policy = policies[connector["metadata"]["name"]]["spec"]
            (ingress,) = policy["ingress"]
            hosting = ingress["from"][0]["podSelector"]["matchLabels"]["lienthong-gateway"]
            assert hosting == labels["lienthong-hosted-by"]


def test_gateways_have_a_disruption_budget_and_tolerate_a_failed_readiness_probe(profiles: dict[str, Any]) -> None:
    for docs in profiles.values():
        budgets = _named(docs, "PodDisruptionBudget")
        for name, gateway in _named(docs, "StatefulSet").items():
            if "gateway" not in name:
                continue
            assert budgets[name]["spec"]["selector"] == gateway["spec"]["selector"]
            assert budgets[name]["spec"]["maxUnavailable"] == 1
            (container,) = gateway["spec"]["template"]["spec"]["containers"]
            assert container["readinessProbe"]["failureThreshold"] > 1


def test_the_bootstrap_job_runs_commands_the_real_cli_has(profiles: dict[str, Any]) -> None:
    """A post-install hook; each `lienthong GROUP COMMAND` its script runs exists, with the options it passes."""
    script = _args(_named(profiles["national"], "Job")["lienthong-bootstrap"])[0]
    job = _named(profiles["province"], "Job")["lienthong-bootstrap"]
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "post-install"
    script += _args(job)[0]
    assert 'lienthong gateways add "national" --base-url "https://national.' in script
    assert "--key-file /etc/lienthong/clients/civil-status/client.key" in script
    assert '--purpose "birth-registration" --purpose "identity-verification"' in script
    calls = re.findall(r"\blienthong ([a-z-]+) ([a-z-]+) (.*?)(?: \$A|\"\$1\" \$A)", script)
    commands = sorted({(g, c) for g, c, _ in calls})
    assert ("subsystems", "add") in commands and ("grants", "add") in commands and ("services", "approve") in commands
    from lienthong.cli import main

    assert isinstance(main, click.Group)
    groups = {name: g for name, g in main.commands.items() if isinstance(g, click.Group)}
    present = [c for c in commands if c[0] in groups and c[1] in groups[c[0]].commands]
    missing = sorted(set(commands) - set(present))
    # `subsystems add` is being added to the CLI in issue 16; every other command must exist now
    assert set(missing) <= {("subsystems", "add")}, missing
    for group, command, rest in calls:
        if (group, command) in present:
            cli = groups[group].commands[command]
            known = {o for p in cli.params for o in p.opts}
            flags = {f for f in re.findall(r"(--[a-z-]+)", rest)} | {"--registry", "--registry-ca", "--key"}
            assert flags <= known, (group, command, flags - known)


def test_bad_values_fail_the_schema() -> None:
    """values.schema.json is strict: an unknown key, a wrong mode, a plain-http registry.url are refused."""
    for change, where in [
        (lambda v: v.update(mod="province"), ""),
        (lambda v: v.update(mode="regional"), "mode"),
        (lambda v: v["registry"].update(url="http://registry:8600"), "registry.url"),
        (lambda v: v["networkPolicy"].update(meshPeer=[]), "networkPolicy"),
        (lambda v: v["bootstrap"]["grants"].append({"consumer": "VN/GOV/A/b", "service": "x"}), "bootstrap.grants.1"),
    ]:
        values = _render.values_for([PROFILES["province"]])
        change(values)
        errors = _schema_errors(values)
        assert errors and all(e.startswith(where) for e in errors), (where, errors)


def test_both_profiles_pass_kubectl_and_the_kubernetes_schemas(tmp_path: Path, profiles: dict[str, Any]) -> None:
    """`kubectl apply --dry-run=client` needs an API server even so (it downloads the OpenAPI document), so the
    rendered manifests go through `kubectl kustomize` (parsed as Kubernetes resources, names unique per kind) and
    each through the Kubernetes 1.30 JSON schemas, strict: an unknown or misplaced field fails."""
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    bad = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"}, "spec": {"prots": []}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, "1.30", strict=True)  # the check below can fail
    for name, path in PROFILES.items():
        directory = tmp_path / name
        directory.mkdir()
        files = []
        for template, text in _render.render(_render.values_for([path])).items():
            if text.strip():
                (directory / template).write_text(text)
                files.append(template)
        (directory / "kustomization.yaml").write_text(yaml.safe_dump({"resources": files}))
        done = subprocess.run(["kubectl", "kustomize", str(directory)], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        built = [d for d in yaml.safe_load_all(done.stdout) if d]
        assert len(built) == len(profiles[name]) > 10
        for doc in built:
            kubernetes_validate.validate(doc, "1.30", strict=True)
    for path in PROFILES.values():
        assert _schema_errors(_render.values_for([path])) == []


# --------------------------------------------------------------------------------------------------- alerts

ALERT_RULE_SCHEMA = {  # a PrometheusRule's spec.groups[].rules[] as the Prometheus Operator's CRD has it (alerts)
    "type": "object",
    "required": ["alert", "expr", "for", "labels", "annotations"],
    "properties": {
        "alert": {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_]*$"},
        "expr": {"type": "string", "minLength": 1},
        "for": {"type": "string", "pattern": "^(0|([0-9]+(ms|s|m|h|d|w|y))+)$"},
        "labels": {"type": "object", "required": ["severity"], "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "required": ["summary"], "additionalProperties": {"type": "string"}},
    },
    "additionalProperties": False,
}


def _alert_manifests(prometheus_rule: bool) -> list[dict[str, Any]]:
    values = _render.values_for([PROFILES["national"]])
    values["metrics"]["alerts"]["prometheusRule"] = prometheus_rule
    text = _render.render(values)["prometheus-rules.yaml"]
    return [d for d in yaml.safe_load_all(text) if d]


def test_the_charts_alert_rules_are_generated_from_the_one_definition() -> None:
    """helm/lienthong/files/prometheus-rules.yaml is `python -m gateway.alerts`'s output for gateway/alert_rules.yaml,
    so the chart and /ops/v1/alerts cannot drift apart."""
    done = subprocess.run([sys.executable, "-m", "gateway.alerts"], capture_output=True, text=True, timeout=60,
                          cwd=CHART.parent.parent)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert (CHART / "files" / "prometheus-rules.yaml").read_text() == done.stdout


@pytest.mark.parametrize("prometheus_rule", [False, True])
def test_alert_rules_render_as_a_rules_configmap_or_a_prometheusrule(prometheus_rule: bool) -> None:
    from gateway.alerts import load_rules

    (doc,) = _alert_manifests(prometheus_rule)
    if prometheus_rule:
        assert (doc["apiVersion"], doc["kind"]) == ("monitoring.coreos.com/v1", "PrometheusRule")
        groups = doc["spec"]["groups"]
    else:
        assert doc["kind"] == "ConfigMap"
        groups = yaml.safe_load(doc["data"]["lienthong-alerts.yaml"])["groups"]
    rules = [r for g in groups for r in g["rules"]]
    for rule in rules:
        jsonschema.validate(rule, ALERT_RULE_SCHEMA)
    assert [r["alert"] for r in rules] == [r.name for r in load_rules()]
    signals = {r["labels"]["signal"] for r in rules}
    assert signals == {"outcome_rate", "latency_p99", "snapshot_age", "certificate_expiry", "spool_backlog",
                       "component_down"}  # fmt: skip
    classes = {m.group(1) for r in rules for m in [re.search(r'outcome="([^"]+)"', r["expr"])] if m}
    assert classes == {"provider-failure", "platform-failure", "client-error"}


def test_alert_expressions_read_only_exported_metrics_and_labels() -> None:
    """No promtool here: every expression's selectors must name series /metrics exports (up aside, Prometheus's own)
    with labels they have, its parentheses balance, and it ends in a comparison with the rule's threshold.
    tests/test_dashboard.py checks the same names against a live gateway's scrape."""
    (doc,) = _alert_manifests(True)
    series = exported_series() | {"up": set()}
    for rule in doc["spec"]["groups"][0]["rules"]:
        expr = rule["expr"]
        assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}"), expr
        assert re.search(r"\s[<>]\s-?[\d.e+]+$", expr), expr
        metrics, grouping = promql_references(expr)
        assert metrics, expr
        known = set(TARGET_LABELS) | {"le"}
        for name, labels in metrics.items():
            assert name in series, f"{name} is not exported (in {rule['alert']})"
            assert labels <= series[name] | TARGET_LABELS, (name, labels)
            known |= series[name]
        assert grouping <= known, (rule["alert"], grouping - known)
