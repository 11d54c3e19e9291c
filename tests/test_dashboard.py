"""The operations dashboard in a real headless Chromium (Debian's package) over a real mesh: after a known burst of
calls, the numbers on the page equal the operations API's numbers and the burst, by outcome class, from any gateway;
a click on a count lists its calls and a call opens its audit record; every table exports CSV; a frozen connector
(SIGSTOP) shows down while its gateway is up and fires the provider-failure alert. One mesh for all; saves a
screenshot (var/screenshots/dashboard.png; with LIENTHONG_UPDATE_SCREENSHOT=1 it replaces docs/dashboard.png, the
README's picture, so an ordinary test run leaves the work tree clean).

Chromium is installed with apt-get when missing and the tests run as root; elsewhere the test skips saying why.
"""

from __future__ import annotations

import csv
import io
import os
import random
import shutil
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

from gateway.alerts import load_rules, prometheus_rules
from gateway.ops_auth import mint_member_token, operator_token_from
from lienthong import keys, tokens
from lienthong.cli.mesh_layout import (
    BUSINESS,
    CONNECTORS,
    HANOI_PORTAL,
    INSURANCE,
    LICENSING,
    MOJ,
    NGHEAN_CIVIL,
    POPULATION,
    VERIFY,
)
from lienthong.cli.mesh_up import Mesh, MeshConfig, start
from lienthong.mesh_client import MeshClient
from lienthong.redis_connection import free_port
from tests.test_dashboard_browser import Browser
from tests.test_helm_chart import promql_references

BIRTH = "birth-registration"
ROOT = Path(__file__).resolve().parent.parent
SCREENSHOT = ROOT / ("docs" if os.environ.get("LIENTHONG_UPDATE_SCREENSHOT") else "var/screenshots") / "dashboard.png"
# the first run may install chromium (bounded below to ten minutes) before the mesh starts
pytestmark = pytest.mark.timeout(900)
# the gateways serve HTTPS with a certificate from the test mesh's own CA, which the browser does not know
CHROMIUM_FLAGS = ["--headless", "--ignore-certificate-errors", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--disable-dev-shm-usage"]  # fmt: skip


def _chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _install_chromium() -> str:
    """Debian's chromium, installed with apt-get if missing; an empty string and the reason when that cannot be."""
    if _chromium_path():
        return ""
    if os.geteuid() != 0:
        return "chromium is not installed and the tests do not run as root, so apt-get cannot install it"
    if shutil.which("apt-get") is None:
        return "chromium is not installed and there is no apt-get to install it with"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", "chromium"]
    deadline = time.monotonic() + 600
    try:
        done = subprocess.run(install, capture_output=True, text=True, timeout=400, env=env)
        if done.returncode != 0:  # the package lists may be missing or stale
            left = deadline - time.monotonic()
            subprocess.run(["apt-get", "update"], capture_output=True, text=True, timeout=left / 3, env=env)
            left = deadline - time.monotonic()
            done = subprocess.run(install, capture_output=True, text=True, timeout=max(1.0, left), env=env)
    except subprocess.TimeoutExpired:
        return "apt-get could not install chromium within 10 minutes"
    if done.returncode != 0 or not _chromium_path():
        return f"apt-get install chromium failed: {(done.stderr or done.stdout).strip()[-300:]}"
    return ""


@pytest.fixture(scope="session")
def chromium() -> str:
    reason = _install_chromium()
    path = _chromium_path()
    if reason or path is None:
        pytest.skip(f"no headless browser for the dashboard test: {reason}")
    return path


def run_chromium(binary: str, profile: Path, url: str, *args: str) -> str:
    profile.mkdir(parents=True, exist_ok=True)
    argv = [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=4000", *args, url]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


class PageValues(HTMLParser):
    """The text of every element marked data-testid, keyed by (testid, data-key), plus the body's attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.values: dict[tuple[str, str | None], str] = {}
        self.body: dict[str, str | None] = {}
        self._open: list[tuple[str, tuple[str, str | None], list[str]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "body":
            self.body = found
        for _, _, text in self._open:
            text.append("")
        testid = found.get("data-testid")
        if testid:
            self._open.append((tag, (testid, found.get("data-key")), []))

    def handle_endtag(self, tag: str) -> None:
        if self._open and self._open[-1][0] == tag:
            _, key, text = self._open.pop()
            self.values[key] = "".join(text).strip()

    def handle_data(self, data: str) -> None:
        for _, _, text in self._open:
            text.append(data)


def read_page(html: str) -> PageValues:
    parser = PageValues()
    parser.feed(html)
    return parser


def number(text: str) -> int:
    return int(text.replace(",", ""))


@dataclass
class Burst:
    mesh: Mesh
    started: datetime
    statuses: Counter[tuple[str, int]]  # (consumer, status) -> calls
    first_scrape: str  # national's /metrics right after the mesh started, before any call or /readyz


def _sample(mesh: Mesh, database: str, sql: str, n: int) -> list[str]:
    engine = sa.create_engine(f"sqlite:///{(mesh.config.paths.data / f'{database}.sqlite').resolve()}")
    with engine.connect() as conn:
        rows = [str(r[0]) for r in conn.execute(sa.text(sql), {"n": n})]
    engine.dispose()
    return rows


def send_burst(mesh: Mesh) -> Counter[tuple[str, int]]:
    """34 calls from three consumers at three home gateways: 26 found, 3 no data (an unknown person), 5 not
    permitted (the mesh refuses a purpose the grant lacks)."""
    people = _sample(mesh, "population", "SELECT id FROM persons ORDER BY id LIMIT :n", 10)
    # a well-formed personal ID no one has (the last one's successor): the connector answers 404, declared no data
    nobody = str(int(_sample(mesh, "population", "SELECT id FROM persons ORDER BY id DESC LIMIT :n", 1)[0]) + 1)
    firms = _sample(mesh, "business", "SELECT code FROM enterprises WHERE parent_code IS NULL ORDER BY code LIMIT :n",
                    6)  # fmt: skip
    insured = _sample(mesh, "insurance", "SELECT si_number FROM insured ORDER BY si_number LIMIT :n", 8)
    rng = random.Random(5)
    plan = (
        [(MOJ, "national", f"{POPULATION}/persons/{rng.choice(people)}", VERIFY) for _ in range(12)]
        + [(MOJ, "national", f"{POPULATION}/persons/{nobody.zfill(12)}", VERIFY) for _ in range(3)]
        + [(NGHEAN_CIVIL, "nghean", f"{INSURANCE}/insured/{rng.choice(insured)}", BIRTH) for _ in range(8)]
        + [(HANOI_PORTAL, "hanoi", f"{BUSINESS}/enterprises/{rng.choice(firms)}", LICENSING) for _ in range(6)]
        + [(HANOI_PORTAL, "hanoi", f"{POPULATION}/persons/{rng.choice(people)}", LICENSING) for _ in range(5)]
    )
    clients: dict[str, MeshClient] = {}
    statuses: Counter[tuple[str, int]] = Counter()
    try:
        for consumer, gateway, target, purpose in plan:
            if consumer not in clients:
                clients[consumer] = mesh.client(consumer, gateway)  # its JWT over TLS, the mesh CA verified
            statuses[(consumer, clients[consumer].call("GET", target, purpose).status_code)] += 1
    finally:
        for client in clients.values():
            client.close()
    return statuses


@pytest.fixture(scope="module")
def burst(chromium: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Burst]:
    root = tmp_path_factory.mktemp("mesh")
    config = MeshConfig(
        root=root, registry_port=free_port(), redis_port=free_port(), redis_url=None, people=300, echo_logs=False,
        gateway_ports={code: free_port() for code in ("national", "hanoi", "nghean")},
        connector_ports={c.name: free_port() for c in CONNECTORS},
    )  # fmt: skip
    started = datetime.now(UTC)
    mesh = start(config, say=lambda line: None)
    try:
        first_scrape = scrape(mesh, "national")
        yield Burst(mesh, started, send_burst(mesh), first_scrape)
    finally:
        mesh.stop()


def scrape(mesh: Mesh, gateway: str) -> str:
    """/metrics as a local Prometheus reads it (loopback, no token)."""
    r = httpx.get(f"{mesh.gateway_urls[gateway]}/metrics", timeout=10, verify=mesh.verify)
    assert r.status_code == 200, r.text
    return r.text


def token(mesh: Mesh, gateway: str) -> str:
    """An operator token for the gateway, as `lienthong ops login` mints it from the gateway's data dir."""
    return operator_token_from(mesh.config.paths.gateway(gateway), gateway)


def login_link(mesh: Mesh, gateway: str, query: str, with_token: str | None = None) -> str:
    """The dashboard link `lienthong ops login` prints: the token in the fragment."""
    return f"{mesh.gateway_urls[gateway]}/ops/v1/dashboard?{query}#token={with_token or token(mesh, gateway)}"


def ops(mesh: Mesh, gateway: str, path: str, **params: str) -> dict[str, Any]:
    r = httpx.get(f"{mesh.gateway_urls[gateway]}/ops/v1/{path}", params=params, timeout=10, verify=mesh.verify,
                  headers={"Authorization": f"Bearer {token(mesh, gateway)}"})  # fmt: skip
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def metered(b: Burst, expected: int) -> dict[str, Any]:
    """The metering API's count of the burst, once the gateways' spools have reached Redis."""
    window = {"from": b.started.strftime("%Y-%m-%dT%H:00:00Z"),
              "to": (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:00:00Z")}  # fmt: skip
    deadline = time.monotonic() + 20
    while True:
        body = ops(b.mesh, "national", "transactions", **window, group_by="consumer")
        if body["total"] >= expected or time.monotonic() > deadline:
            return body
        time.sleep(0.2)


def ms(value: float) -> str:
    """The page's rendering of a latency in ms (dashboard.js `ms`)."""
    return f"{value:.2f}" if value < 10 else f"{value:.1f}" if value < 1000 else f"{round(value):,}"


def logged(b: Burst, expected: int) -> None:
    """Wait until the transaction log holds the burst's calls (it promises 5 s)."""
    deadline = time.monotonic() + 30
    window = {"from": (b.started - timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%SZ"), "limit": "1000"}
    while len(ops(b.mesh, "national", "calls", **window)["calls"]) < expected:
        assert time.monotonic() < deadline, "the transaction log did not get the burst within 30 s"
        time.sleep(0.2)


def test_the_burst_went_through_as_planned(burst: Burst) -> None:
    assert burst.statuses == {(MOJ, 200): 12, (MOJ, 404): 3, (NGHEAN_CIVIL, 200): 8, (HANOI_PORTAL, 200): 6,
                              (HANOI_PORTAL, 403): 5}  # fmt: skip


def test_dashboard_numbers_equal_the_metering_api_and_the_burst(burst: Burst, chromium: str, tmp_path: Path) -> None:
    sent = sum(burst.statuses.values())
    per_consumer: Counter[str] = Counter()
    for (consumer, _), n in burst.statuses.items():
        per_consumer[consumer] += n
    api = metered(burst, sent)
    logged(burst, sent)
    assert api["total"] == sent
    assert {g["consumer"]: g["count"] for g in api["groups"]} == per_consumer

    mesh = burst.mesh
    url = login_link(mesh, "national", "window=hour&group_by=consumer")
    before = {g["gateway"]: g for g in ops(mesh, "national", "gateways")["gateways"]}
    page = read_page(run_chromium(chromium, tmp_path / "profile", url, "--dump-dom"))
    after = {g["gateway"]: g for g in ops(mesh, "national", "gateways")["gateways"]}
    assert page.body.get("data-state") == "ready", page.values.get(("load-error", None))
    assert page.body.get("data-address") == "clean"  # the token left the address bar
    assert page.values[("who", None)].startswith("operator")
    v = page.values

    assert number(v[("total", None)]) == sent
    assert {key: number(text) for (tid, key), text in v.items() if tid == "series-total"} == per_consumer
    assert {key: number(text) for (tid, key), text in v.items() if tid == "consumer-count"} == per_consumer

    # the outcome classes kept apart: answers (found, no data, not permitted) are not errors
    errors = ops(mesh, "national", "errors", window="hour")
    expected = {"found": 26, "no-data": 3, "not-permitted": 5, "client-error": 0, "provider-failure": 0,
                "platform-failure": 0}  # fmt: skip
    assert errors["outcomes"] == expected
    assert {o: number(v[(f"count-{o}", None)]) for o in expected} == expected
    for rate in ("client-error", "provider-failure", "platform-failure"):
        assert v[(f"rate-{rate}", None)] == "0.00%"
    assert v[("rate-answers", None)] == "100.00% of calls"
    assert number(v[("service-no-data", POPULATION)]) == 3 and number(v[("service-found", POPULATION)]) == 12
    assert number(v[("service-not-permitted", POPULATION)]) == 5

    # exact percentiles from the transaction log, not histogram bounds
    assert "exact" in v[("latency-source", None)]
    window = {"from": (burst.started - timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%SZ")}
    for service, n in {POPULATION: 20, INSURANCE: 8, BUSINESS: 6}.items():
        exact = ops(mesh, "national", "calls/latency", service=service, **window)
        assert exact["count"] == n == number(v[("latency-count", service)])
        assert v[("latency-p50", service)] == ms(exact["p50_ms"]) and v[("latency-p99", service)] == ms(exact["p99_ms"])

    # the registry keeps publishing snapshots, so a version may move while the page loads; it lies between the
    # heartbeats read just before and just after, and the heartbeats follow each gateway's own /health
    for code in ("national", "hanoi", "nghean"):
        assert before[code]["status"] == after[code]["status"] == v[("gateway-status", code)] == "up"
        shown = int(v[("gateway-snapshot-version", code)].removeprefix("v"))
        assert before[code]["snapshot_version"] <= shown <= after[code]["snapshot_version"]
        assert after[code]["snapshot_version"] <= ops(mesh, code, "health")["snapshot"]["version"]
        assert v[("gateway-snapshot-age", code)].endswith(("s", "min"))
    assert v[("gateways-up", None)] == "3 / 3"


def test_any_gateway_serves_the_same_mesh_wide_numbers_and_a_screenshot(
    burst: Burst, chromium: str, tmp_path: Path
) -> None:
    sent = sum(burst.statuses.values())
    metered(burst, sent)
    mesh = burst.mesh
    url = login_link(mesh, "hanoi", "window=month&group_by=service")
    page = read_page(run_chromium(chromium, tmp_path / "profile", url, "--dump-dom"))
    assert page.body.get("data-window") == "month" and page.values[("served-by", None)] == "served by hanoi"
    month = ops(mesh, "hanoi", "timeseries", window="month", group_by="service")
    assert number(page.values[("total", None)]) == month["total"] == sent
    shown = {key: number(text) for (tid, key), text in page.values.items() if tid == "series-total"}
    assert shown == {s["key"]: s["total"] for s in month["series"]} == {POPULATION: 20, INSURANCE: 8, BUSINESS: 6}

    shot_url = login_link(mesh, "national", "window=hour&group_by=service")
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    run_chromium(chromium, tmp_path / "profile-shot", shot_url, f"--screenshot={SCREENSHOT}", "--window-size=1400,1000")
    data = SCREENSHOT.read_bytes()
    assert data.startswith(b"\x89PNG") and len(data) > 20_000


def test_without_a_token_the_page_asks_for_one_and_shows_no_number(burst: Burst, chromium: str, tmp_path: Path) -> None:
    nothing = "\u2013"  # what the page shows before it has a number
    url = f"{burst.mesh.gateway_urls['national']}/ops/v1/dashboard?window=hour"
    page = read_page(run_chromium(chromium, tmp_path / "profile", url, "--dump-dom"))
    assert page.body.get("data-state") == "login"
    assert page.values[("total", None)] == nothing and page.values[("gateways-up", None)] == nothing
    key = keys.load_private(burst.mesh.config.paths.gateway("national") / "gateway.key")
    claims = {"iss": "lienthong-ops", "sub": "operator", "aud": "ops:national"}
    expired = tokens.sign(key, keys.public_jwk(key)["kid"], claims, now=time.time() - 600)
    link = login_link(burst.mesh, "national", "window=hour", expired)
    page = read_page(run_chromium(chromium, tmp_path / "profile2", link, "--dump-dom"))
    assert page.body.get("data-state") == "login" and "expired" in page.values[("login-error", None)]
    assert page.values[("total", None)] == nothing


def test_a_member_link_shows_only_that_members_calls(burst: Burst, chromium: str, tmp_path: Path) -> None:
    sent = sum(burst.statuses.values())
    metered(burst, sent)
    mesh = burst.mesh
    key = keys.load_private(mesh.config.paths.client_key(NGHEAN_CIVIL))
    member = mint_member_token(key, mesh.kids[NGHEAN_CIVIL], NGHEAN_CIVIL, "national")
    url = login_link(mesh, "national", "window=hour&group_by=consumer", member)
    page = read_page(run_chromium(chromium, tmp_path / "profile", url, "--dump-dom"))
    assert page.body.get("data-state") == "ready", page.values.get(("load-error", None))
    mine = burst.statuses[(NGHEAN_CIVIL, 200)]
    assert number(page.values[("total", None)]) == mine
    assert {key for (tid, key) in page.values if tid == "consumer-count"} == {NGHEAN_CIVIL}
    assert page.values[("who", None)].startswith(f"member {NGHEAN_CIVIL}")


def test_metrics_are_set_right_after_start_and_hold_every_series_an_alert_reads(burst: Burst) -> None:
    """The snapshot gauges read the snapshot in use from the first scrape on (they used to read 0 until a /readyz),
    and so do the certificate, spool and connector gauges; after the burst, every metric the alert rules read is in
    a live gateway's scrape (Prometheus's own `up` aside)."""
    first = {s.name: s for f in text_string_to_metric_families(burst.first_scrape) for s in f.samples}
    assert first["lienthong_gateway_snapshot_version"].value >= 1
    assert abs(first["lienthong_gateway_snapshot_confirmed_timestamp_seconds"].value - time.time()) < 600
    assert first["lienthong_gateway_certificate_expiry_seconds"].value > 86400
    up = {s.labels["service"]: s.value for f in text_string_to_metric_families(burst.first_scrape) for s in f.samples
          if s.name == "lienthong_gateway_connector_up"}  # fmt: skip
    assert up == {c.service: 1 for c in CONNECTORS if c.gateway == "national"}  # none called yet
    spools = {s.labels["spool"] for f in text_string_to_metric_families(burst.first_scrape) for s in f.samples
              if s.name == "lienthong_gateway_spool_backlog_bytes"}  # fmt: skip
    assert spools == {"meter", "txlog"}

    metered(burst, sum(burst.statuses.values()))
    live = {s.name for f in text_string_to_metric_families(scrape(burst.mesh, "national")) for s in f.samples}
    for rule in prometheus_rules(load_rules())["groups"][0]["rules"]:
        names, _ = promql_references(rule["expr"])
        assert set(names) - {"up"} <= live, (rule["alert"], set(names) - live)


# --------------------------------------------------------------------------------------------- clicks, in DevTools


@pytest.fixture(scope="module")
def browser(chromium: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    root = tmp_path_factory.mktemp("browser")
    b = Browser(chromium, CHROMIUM_FLAGS, root / "profile", root / "downloads")
    try:
        yield b
    finally:
        b.close()


def open_dashboard(b: Browser, mesh: Mesh, query: str = "window=hour&group_by=consumer") -> None:
    # a query of its own: a link that differs from the page shown only in its fragment would not load a new page
    b.go(login_link(mesh, "national", f"{query}&load={time.monotonic_ns()}"))
    b.wait("document.body.dataset.state === 'ready'", "the dashboard to load")


def test_a_count_opens_its_calls_and_a_call_its_audit_record(burst: Burst, browser: Browser) -> None:
    sent = sum(burst.statuses.values())
    metered(burst, sent)
    logged(burst, sent)
    mesh = burst.mesh
    open_dashboard(browser, mesh)
    browser.click('[data-testid="count-not-permitted"]')
    browser.wait("document.body.dataset.calls === 'ready'", "the calls behind the count")
    assert browser.texts('[data-testid="call-outcome"]').values() and set(
        browser.texts('[data-testid="call-outcome"]').values()) == {"not-permitted"}
    refused = browser.texts('[data-testid="call-client"]')
    assert len(refused) == burst.statuses[(HANOI_PORTAL, 403)] and set(refused.values()) == {HANOI_PORTAL}
    assert set(browser.texts('[data-testid="call-status"]').values()) == {"403"}

    # a count in a table: the no-data answers of MOJ's unknown person, then one of them opens its audit record
    browser.click(f'[data-testid="service-no-data"][data-key="{POPULATION}"]')
    browser.wait("document.body.dataset.calls === 'ready'", "the calls behind the table's count")
    ids = browser.texts('[data-testid="call-open"]')
    assert len(ids) == 3 and set(browser.texts('[data-testid="call-error-type"]').values()) == {"http-404"}
    listed = ops(mesh, "national", "calls", outcome="no-data", service=POPULATION, limit="100",
                 **{"from": (burst.started - timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%SZ")})["calls"]
    assert {c["xroad_id"] for c in listed} == set(ids)
    xroad_id = next(iter(ids))
    browser.click(f'[data-testid="call-open"][data-key="{xroad_id}"]')
    browser.wait("document.body.dataset.audit === 'ready'", "the call's audit record")
    fields = browser.texts('[data-testid="audit-field"]')
    assert fields["transaction_id"] == xroad_id and fields["client"] == MOJ and fields["status"] == "404"


def test_every_table_exports_csv(burst: Burst, browser: Browser) -> None:
    metered(burst, sum(burst.statuses.values()))
    open_dashboard(browser, burst.mesh)
    browser.click('button[data-csv="top-consumers"]')
    rows = list(csv.reader(io.StringIO(browser.download("lienthong-top-consumers.csv"))))
    assert rows[0][:2] == ["consumer", "calls"]
    per_consumer: Counter[str] = Counter()
    for (consumer, _), n in burst.statuses.items():
        per_consumer[consumer] += n
    assert {r[0]: int(r[1]) for r in rows[1:]} == per_consumer
    assert len(browser.js("[...document.querySelectorAll('button[data-csv]')].map((b) => b.dataset.csv)")) >= 7

    # the calls list exports every matching call, from the server's CSV
    browser.click('[data-testid="count-found"]')
    browser.wait("document.body.dataset.calls === 'ready'", "the found calls")
    browser.click('[data-testid="csv-calls"]')
    text = browser.download("lienthong-calls.csv")
    calls = list(csv.DictReader(io.StringIO(text)))
    assert len(calls) == 26, text[:500]
    assert {c["outcome"] for c in calls} == {"found"} and {c["role"] for c in calls} <= {"home", "local"}
    assert {c["xroad_id"] for c in calls} >= set(browser.texts('[data-testid="call-open"]'))


def test_a_frozen_connector_shows_down_and_fires_the_provider_failure_alert(burst: Burst, browser: Browser) -> None:
    """SIGSTOP the population connector: calls to it time out (5 s at most), its gateway stays up, the connector shows
    down, and with 3 failures in 37 calls the provider-failure rate (8%) passes its 5% threshold. SIGCONT ends it."""
    mesh = burst.mesh
    metered(burst, sum(burst.statuses.values()))
    key = f"connector:{POPULATION}"
    process = mesh.supervisor.component("population").process
    assert process is not None
    client = mesh.client(MOJ, "national")
    people = _sample(mesh, "population", "SELECT id FROM persons ORDER BY id LIMIT :n", 1)
    os.killpg(process.pid, signal.SIGSTOP)
    try:
        with ThreadPoolExecutor(3) as pool:
            statuses = list(pool.map(lambda _: client.call("GET", f"{POPULATION}/persons/{people[0]}", VERIFY)
                                     .status_code, range(3)))  # fmt: skip
        assert set(statuses) <= {502, 504}, statuses  # no answer in time, or no connection in time: the provider's
        deadline = time.monotonic() + 20
        while True:  # the heartbeat carries it within its 2 s interval
            items = {f"{i['kind']}:{i['name']}": i for i in ops(mesh, "national", "components")["items"]}
            if items[key]["status"] == "down" or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert items[key]["status"] == "down" and items[key]["recent_timeouts"] + items[key]["recent_failures"] >= 3
        assert items["gateway:national"]["status"] == "up"
        alerts = {r["name"]: r for r in ops(mesh, "national", "alerts")["rules"]}
        assert alerts["LienthongProviderFailureRate"]["state"] == "firing"
        assert alerts["LienthongComponentDown"]["state"] == "firing"
        open_dashboard(browser, mesh)
        shown = browser.wait(f"(document.querySelector('[data-testid=\"component-status\"][data-key=\"{key}\"]') "
                             "|| {}).textContent", "the components panel")  # fmt: skip
        assert shown == "down"
        assert browser.texts('[data-testid="component-status"]')["gateway:national"] == "up"
        states = browser.texts('[data-testid="alert-state"]')
        assert states["LienthongProviderFailureRate"] == "firing" and states["LienthongPlatformFailureRate"] == "ok"
        assert number(browser.text('[data-testid="count-provider-failure"]')) == 3
    finally:
        os.killpg(process.pid, signal.SIGCONT)
    time.sleep(0.5)
    assert client.call("GET", f"{POPULATION}/persons/{people[0]}", VERIFY).status_code == 200
    client.close()
    deadline = time.monotonic() + 20
    while True:
        items = {f"{i['kind']}:{i['name']}": i for i in ops(mesh, "national", "components")["items"]}
        if items[key]["status"] == "up" or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert items[key]["status"] == "up"
