"""The demo on a running mesh: plain HTTP refused by a gateway, the birth-to-health-card procedure (twice: allowed,
then refused), a burst of mixed ministry traffic, and the metering table read back from the operations API.

Every call goes over HTTPS verified with the mesh CA. Nghe An's civil status system and the Ministry of Justice
authenticate by their TLS client certificates (X-Road's way, no token); Ha Noi's portal by a signed JWT.

Every step records what it expected and what it got, so `lienthong demo --once` can exit non-zero on any surprise.
"""

from __future__ import annotations

import datetime as dt
import random
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx
import sqlalchemy as sa
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from gateway.ops_auth import operator_token_from
from lienthong.cli.mesh_layout import (
    BIRTH,
    BUSINESS,
    CIVIL_STATUS,
    DATA_SUBJECT_ACCESS,
    DATA_TRACKER,
    HANOI_PORTAL,
    INSURANCE,
    LICENSING,
    MOJ,
    NATIONAL_PORTAL,
    NGHEAN_CIVIL,
    POPULATION,
    VERIFY,
)
from lienthong.cli.mesh_up import Mesh
from lienthong.mesh_client import MeshClient

NGHEAN_PROVINCE = "040"
HANOI_PROVINCE = "001"
BY_CERTIFICATE = frozenset({NGHEAN_CIVIL, MOJ})  # the client systems that call with their TLS certificate


@dataclass
class Step:
    name: str
    expected: int
    status: int
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.status == self.expected


@dataclass
class DemoReport:
    steps: list[Step] = field(default_factory=list)
    calls_sent: int = 0
    metered: int | None = None

    @property
    def ok(self) -> bool:
        return all(s.ok for s in self.steps) and self.metered == self.calls_sent


class Demo:
    def __init__(self, mesh: Mesh, console: Console | None = None, burst: int = 300) -> None:
        self.mesh = mesh
        self.console = console or Console()
        self.burst_size = burst
        self.report = DemoReport()
        self.started = dt.datetime.now(dt.UTC)
        self.earlier = 0  # calls metered in this hour before the run began: not this run's
        self.children: list[str] = []  # personal IDs the procedures assigned

    def client(self, subsystem: str, gateway: str) -> MeshClient:
        certificate = self.mesh.ca is not None and subsystem in BY_CERTIFICATE
        return self.mesh.client(subsystem, gateway, certificate=certificate)

    @staticmethod
    def how(client: MeshClient) -> str:
        if client.by_certificate:
            return "its TLS client certificate (no token)"
        return "a signed JWT over TLS" if client.gateway_url.startswith("https:") else "a signed JWT"

    # ---- TLS -----------------------------------------------------------------------------------------------------

    def plaintext_refused(self) -> None:
        """A plain HTTP request to a gateway's HTTPS port gets 400 tls-required: nothing crosses in clear."""
        url = self.mesh.gateway_urls["hanoi"].replace("https://", "http://", 1)
        try:
            r = httpx.get(f"{url}/healthz", timeout=10)  # no problem+json asked: X-Road's shape, 400 Client.*
            status, detail = r.status_code, r.text[:200].replace("\n", " ")
            try:  # lienthong's code is the body's `code`; the X-Road-Error header holds X-Road's type
                body = r.json()
                detail = f"{body.get('code')}: {body.get('message')} (X-Road-Error {r.headers.get('x-road-error')})"
            except ValueError:
                pass
        except httpx.HTTPError as exc:
            status, detail = 0, f"{type(exc).__name__}: {exc}"
        self.report.steps.append(Step("plain HTTP to gateway hanoi is refused", 400, status, detail))
        mark = "[green]✔[/]" if status == 400 else "[red]✘[/]"
        self.console.print(f"  {mark} plain HTTP to {url}: HTTP {status}", markup=True, highlight=False)
        self.console.print(f"    {detail}", markup=False, highlight=False)

    def _call(self, client: MeshClient, step: str, expected: int, method: str, target: str, purpose: str,
              **kw: Any) -> httpx.Response:  # fmt: skip
        response = client.call(method, target, purpose, **kw)
        self.report.calls_sent += 1
        detail = ""
        if response.status_code >= 400:
            try:
                problem = response.json()
                detail = f"{problem.get('code')}: {problem.get('detail')}"
            except ValueError:
                detail = response.text[:200]
        self.report.steps.append(Step(step, expected, response.status_code, detail))
        mark = "[green]✔[/]" if response.status_code == expected else "[red]✘[/]"
        mesh_error = response.headers.get("x-road-error")  # X-Road's type; lienthong's code is in the body
        extra = f" (X-Road-Error {mesh_error})" if mesh_error else ""
        self.console.print(f"  {mark} {step}: HTTP {response.status_code}{extra} {detail}")
        return response

    # ---- the procedure -------------------------------------------------------------------------------------------

    def family(self, province: str) -> dict[str, Any]:
        """A married couple living in one household of the province: the citizens who come to register a birth."""
        engine = sa.create_engine(f"sqlite:///{(self.mesh.config.paths.data / 'population.sqlite').resolve()}")
        with engine.connect() as conn:
            row = conn.execute(
                sa.text(
                    "SELECT p.id, p.spouse_id, p.household_id, p.sex FROM persons p "
                    "JOIN persons s ON s.id = p.spouse_id AND s.household_id = p.household_id "
                    "JOIN households h ON h.id = p.household_id "
                    "WHERE h.province_code = :province AND p.death_date IS NULL AND p.sex = 'M' "
                    "AND p.birth_date > '1980-01-01' ORDER BY p.id LIMIT 1"
                ),
                {"province": province},
            ).first()
        engine.dispose()
        if row is None:
            raise RuntimeError(f"the generated data has no couple in province {province}; generate more people")
        return {"father_id": row[0], "mother_id": row[1], "household_id": row[2]}

    def procedure(self, consumer: str, gateway: str, province: str, *, allowed: bool) -> None:
        client = self.client(consumer, gateway)
        self.console.print(f"  {consumer} calls gateway {gateway} with {self.how(client)}", highlight=False)
        fam = self.family(province)
        born = (dt.date.today() - dt.timedelta(days=3)).isoformat()
        child = {"full_name": "Nguyễn Minh An", "sex": "M", "birth_date": born}
        case = f"HS-{uuid.uuid4().hex[:8].upper()}"
        official = "canbo.hotich.01"
        birth_id = None
        if consumer == NGHEAN_CIVIL:
            r = self._call(
                client, "1. Nghe An civil status records the birth", 201, "POST", f"{CIVIL_STATUS}/births", BIRTH,
                body={"child_name": child["full_name"], "sex": "M", "birth_date": born,
                      "birth_place": "Bệnh viện Sản Nhi Nghệ An", "father_id": fam["father_id"],
                      "mother_id": fam["mother_id"]},
                idempotency_key=f"birth-{case}", user_id=official, issue=case,
            )  # fmt: skip
            birth_id = r.json().get("id") if r.status_code == 201 else None
        r = self._call(
            client, "2. population assigns a personal ID and adds the child to the household", 201, "POST",
            f"{POPULATION}/births", BIRTH,
            body={**child, "birth_place": "Bệnh viện Sản Nhi", "registration_province": province,
                  "household_id": fam["household_id"], "relation_to_head": "child",
                  "father_id": fam["father_id"], "mother_id": fam["mother_id"]},
            idempotency_key=f"pid-{case}", user_id=official, issue=case,
        )  # fmt: skip
        if r.status_code != 201:
            return
        personal_id = r.json()["id"]
        self.children.append(personal_id)
        r = self._call(
            client,
            "3. insurance issues the TE health insurance card" if allowed else
            "3. insurance card refused: this consumer's grant forbids the card fields",
            201 if allowed else 403, "POST", f"{INSURANCE}/cards", BIRTH,
            body={"personal_id": personal_id, "full_name": child["full_name"], "birth_date": born, "sex": "M",
                  "primary_care_facility_code": f"{province[-2:]}001",
                  "primary_care_facility_name": "Trạm y tế phường"},
            idempotency_key=f"card-{case}", user_id=official, issue=case,
        )  # fmt: skip
        card = r.json() if r.status_code == 201 else None
        if birth_id and card:
            self._call(
                client, "4. the birth record is completed with the ID and the card", 200, "PATCH",
                f"{CIVIL_STATUS}/births/{birth_id}", BIRTH,
                body={"personal_id": personal_id, "hi_card_code": card["code"]}, user_id=official, issue=case,
            )  # fmt: skip
        table = Table(title=f"Result for {consumer} (case {case})", show_header=False)
        table.add_row("personal ID", personal_id)
        table.add_row("health insurance card", card["code"] if card else "[red]refused (403)[/]")
        if card:
            table.add_row("valid from", str(card.get("valid_from")))
            table.add_row("valid to", str(card.get("valid_to")))
        self.console.print(table)

    # ---- who read my data -----------------------------------------------------------------------------------------

    def who_read(self, personal_id: str, readers: int = 3, timeout: float = 20.0) -> None:
        """The national portal asks the data tracker, for the child's parents, who read the child's data; the
        transaction log is fed within seconds, so the answer is awaited until the procedure's readers are there."""
        client = self.client(NATIONAL_PORTAL, "national")
        target = f"{DATA_TRACKER}/persons/{personal_id}/accesses"
        deadline = time.monotonic() + timeout
        while True:
            response = client.call("GET", target, DATA_SUBJECT_ACCESS)
            self.report.calls_sent += 1  # each one is metered, the tracker's own calls too
            accesses = response.json().get("accesses", []) if response.status_code == 200 else []
            if len({a["service"] for a in accesses}) >= readers or time.monotonic() >= deadline:
                break
            time.sleep(0.5)
        self._call_seen(response, f"the data tracker answers for the child {personal_id[:3]}*********")
        self.console.print("  who read the child's data, newest first:", highlight=False)
        for a in accesses:  # one line each: a table would cut the identifiers at a terminal's width
            self.console.print(f"    {a['time'][11:19]}  {a['subsystem']} read {a['service']} ({a['endpoint']}) for "
                               f"{a['purpose']}: {a['outcome']}", highlight=False, markup=False)  # fmt: skip

    def _call_seen(self, response: httpx.Response, step: str) -> None:
        """A call already made and counted, reported like those of _call."""
        self.report.steps.append(Step(step, 200, response.status_code, response.text[:200]))
        mark = "[green]✔[/]" if response.status_code == 200 else "[red]✘[/]"
        self.console.print(f"  {mark} {step}: HTTP {response.status_code}")

    # ---- the burst -----------------------------------------------------------------------------------------------

    def _sample(self, database: str, sql: str, n: int = 40) -> list[str]:
        engine = sa.create_engine(f"sqlite:///{(self.mesh.config.paths.data / f'{database}.sqlite').resolve()}")
        with engine.connect() as conn:
            rows = [str(r[0]) for r in conn.execute(sa.text(sql), {"n": n})]
        engine.dispose()
        return rows

    def burst(self) -> None:
        people = self._sample("population", "SELECT id FROM persons ORDER BY id LIMIT :n")
        firms = self._sample(
            "business", "SELECT code FROM enterprises WHERE parent_code IS NULL ORDER BY code LIMIT :n"
        )
        insured = self._sample("insurance", "SELECT si_number FROM insured ORDER BY si_number LIMIT :n")
        clients = {
            (MOJ, "national"): self.client(MOJ, "national"),
            (HANOI_PORTAL, "hanoi"): self.client(HANOI_PORTAL, "hanoi"),
            (NGHEAN_CIVIL, "nghean"): self.client(NGHEAN_CIVIL, "nghean"),
        }
        for (subsystem, gateway), client in clients.items():
            self.console.print(f"  {subsystem} at gateway {gateway}: {self.how(client)}", highlight=False)
        calls: list[tuple[MeshClient, str, str, str]] = []
        rng = random.Random(7)  # the same mix every run
        for _ in range(self.burst_size):
            kind = rng.random()
            if kind < 0.35:
                calls.append((clients[(MOJ, "national")], "GET", f"{POPULATION}/persons/{rng.choice(people)}", VERIFY))
            elif kind < 0.6:
                target = f"{BUSINESS}/enterprises/{rng.choice(firms)}"
                calls.append((clients[(HANOI_PORTAL, "hanoi")], "GET", target, LICENSING))
            elif kind < 0.85:
                target = f"{INSURANCE}/insured/{rng.choice(insured)}"
                calls.append((clients[(NGHEAN_CIVIL, "nghean")], "GET", target, BIRTH))
            else:  # a purpose the grant does not allow: the mesh says no
                calls.append((clients[(HANOI_PORTAL, "hanoi")], "GET", f"{POPULATION}/persons/{rng.choice(people)}",
                              LICENSING))  # fmt: skip
        statuses: dict[int, int] = {}

        def one(call: tuple[MeshClient, str, str, str]) -> int:
            client, method, target, purpose = call
            try:
                return client.call(method, target, purpose).status_code
            except httpx.HTTPError:
                return 0

        with Progress(console=self.console, transient=False) as progress, ThreadPoolExecutor(8) as pool:
            task = progress.add_task("mixed ministry traffic", total=len(calls))
            for status in pool.map(one, calls):
                statuses[status] = statuses.get(status, 0) + 1
                progress.advance(task)
        self.report.calls_sent += len(calls)
        summary = ", ".join(f"{count} x HTTP {status}" for status, count in sorted(statuses.items()))
        self.console.print(f"  burst: {summary}")
        self.report.steps.append(Step("burst: no call lost on the wire", 0, statuses.get(0, 0)))
        for client in clients.values():
            client.close()

    # ---- metering ------------------------------------------------------------------------------------------------

    def transactions(self, timeout: float = 20.0) -> dict[str, Any]:
        """The metering API's counts from the hour the demo started on, by service, consumer and gateway. An answer
        that is not 200 is retried, then raised: a failed read taken as 0 would count an earlier run's calls."""
        url = f"{self.mesh.gateway_urls['national']}/ops/v1/transactions"
        # the demo runs the mesh, so it is its operator: a token signed with the gateway's own key
        token = operator_token_from(self.mesh.config.paths.gateway("national"), "national")
        to = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
        params = {"from": self.started.strftime("%Y-%m-%dT%H:00:00Z"), "to": to.strftime("%Y-%m-%dT%H:00:00Z"),
                  "group_by": "service,consumer,gateway"}  # fmt: skip
        headers = {"Authorization": f"Bearer {token}"}
        deadline = time.monotonic() + timeout
        while True:
            try:
                r = httpx.get(url, params=params, timeout=10, headers=headers, verify=self.mesh.verify)
                if r.status_code == 200 and "total" in r.json():
                    body: dict[str, Any] = r.json()
                    return body
                problem = f"HTTP {r.status_code}: {r.text[:200]}"
            except (httpx.HTTPError, ValueError) as exc:
                problem = f"{type(exc).__name__}: {exc}"
            if time.monotonic() > deadline:
                raise RuntimeError(f"the metering API at {url} did not answer: {problem}")
            time.sleep(0.25)

    def baseline(self, quiet: float = 0.5, timeout: float = 10.0) -> int:
        """The count before this run's first call: the calls of earlier runs on this --home in the same hour. Taken
        once the count stops moving, so that an earlier run's spool still being replayed is not counted as ours."""
        deadline = time.monotonic() + timeout
        total = int(self.transactions()["total"])
        while time.monotonic() < deadline:
            time.sleep(quiet)
            again = int(self.transactions()["total"])
            if again == total:
                break
            total = again
        return total

    def metering(self, timeout: float = 20.0) -> None:
        """Read this run's count back from the operations API (the total less the baseline taken before the run's
        first call), waiting for the meter's spool to reach Redis, then a moment more so a count too high shows."""
        deadline = time.monotonic() + timeout
        body = self.transactions()
        while body["total"] - self.earlier < self.report.calls_sent and time.monotonic() < deadline:
            time.sleep(0.25)
            body = self.transactions()
        time.sleep(0.3)  # the meter flushes every 50 ms: a call counted twice would have arrived by now
        body = self.transactions()
        self.report.metered = int(body["total"]) - self.earlier
        table = Table(title="Transactions metered across the mesh (from the operations API)")
        for column in ("service", "consumer", "gateway", "count"):
            table.add_column(column, justify="right" if column == "count" else "left")
        for group in sorted(body.get("groups", []), key=lambda g: -int(g["count"])):
            table.add_row(str(group.get("service")), str(group.get("consumer")), str(group.get("gateway")),
                          str(group["count"]))  # fmt: skip
        self.console.print(table)
        verdict = "[green]equal[/]" if self.report.metered == self.report.calls_sent else "[red]NOT equal[/]"
        self.console.print(f"  calls sent {self.report.calls_sent}, metered {self.report.metered}: {verdict}")

    def run(self) -> DemoReport:
        section: Callable[[str], None] = lambda text: self.console.rule(f"[bold]{text}")  # noqa: E731
        self.earlier = self.baseline()
        if self.mesh.ca is not None:
            section("TLS on every link: plain HTTP is refused")
            self.plaintext_refused()
        section("Birth registration + personal ID + health insurance card, Nghe An (allowed)")
        self.procedure(NGHEAN_CIVIL, "nghean", NGHEAN_PROVINCE, allowed=True)
        if self.children:
            section("Who read the child's data: the data tracker, asked through the national portal")
            self.who_read(self.children[0])
        section("The same procedure from Ha Noi's portal, whose grant forbids the card fields")
        self.procedure(HANOI_PORTAL, "hanoi", HANOI_PROVINCE, allowed=False)
        section(f"A burst of {self.burst_size} mixed ministry calls")
        self.burst()
        section("Metering")
        self.metering()
        return self.report
