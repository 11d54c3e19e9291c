"""Property-based runs of schemathesis against each connector's own OpenAPI document, on data from the data
helper's generator: no input may give a 5xx or an answer that breaks the document. Each request carries a fresh,
valid gateway assertion so the runs reach the handlers. `--schemathesis-long` (make fuzz) runs many more examples."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
import sqlalchemy as sa
from hypothesis import HealthCheck, settings

from connectors.business_registry import CONNECTOR as BUSINESS
from connectors.civil_status import CONNECTOR as CIVIL
from connectors.datagen import generate
from connectors.insurance import CONNECTOR as INSURANCE
from connectors.population import CONNECTOR as POPULATION
from connectors.schema import business, civil_status, insurance, population
from connectors.sdk import ConnectorDefinition
from tests.connector_support import SigningGateway, ThreadServer, serve

# connector -> the generated database it serves
DATABASE = {POPULATION.name: "population", BUSINESS.name: "business", INSURANCE.name: "insurance",
            CIVIL.name: "civil_status"}  # fmt: skip
DEFINITIONS = {d.name: d for d in (POPULATION, BUSINESS, INSURANCE, CIVIL)}
SHORT, LONG = 15, 300
# A schema-valid request may still break a domain rule no pattern can state (an ID's birth year in the future, an
# enterprise code's check digit); its 400 is declared in the document, so only this one check is left out.
EXCLUDED = [schemathesis.checks.positive_data_acceptance]


@pytest.fixture(scope="module")
def gateway() -> SigningGateway:
    return SigningGateway.make()


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return generate(tmp_path_factory.mktemp("generated"), people=300, seed=7).urls


@pytest.fixture(scope="module")
def servers(generated: dict[str, str], gateway: SigningGateway) -> Iterator[dict[str, ThreadServer]]:
    running: dict[str, ThreadServer] = {}
    stack = []
    try:
        for name, definition in DEFINITIONS.items():
            ctx = serve(definition, gateway, generated[DATABASE[name]])
            running[name] = ctx.__enter__()
            stack.append(ctx)
        yield running
    finally:
        for ctx in reversed(stack):
            ctx.__exit__(None, None, None)


def _examples(request: pytest.FixtureRequest) -> int:
    try:
        return LONG if request.config.getoption("--schemathesis-long") else SHORT
    except ValueError:
        return SHORT


@pytest.mark.parametrize("name", list(DEFINITIONS))
def test_no_5xx_and_no_answer_off_the_spec(
    name: str, servers: dict[str, ThreadServer], gateway: SigningGateway, request: pytest.FixtureRequest
) -> None:
    definition: ConnectorDefinition = DEFINITIONS[name]
    server = servers[name]
    schema = schemathesis.openapi.from_path(definition.spec_path)
    failures: list[str] = []
    examples = _examples(request)
    for result in schema.get_all_operations():
        operation = result.ok()

        @settings(max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        def check(case: Any) -> None:
            headers = {"X-Lienthong-Assertion": gateway.assertion(definition.service_id)}
            case.call_and_validate(base_url=server.url, headers=headers, excluded_checks=EXCLUDED)

        strategy_test = schemathesis_given(operation, check)
        try:
            strategy_test()
        except Exception as exc:  # collect every operation's failure before reporting
            failures.append(f"{operation.label}: {exc}")
    assert not failures, "\n\n".join(failures)


def schemathesis_given(operation: Any, check: Any) -> Any:
    from hypothesis import given

    return given(case=operation.as_strategy())(check)


def test_generated_records_are_served(
    generated: dict[str, str], servers: dict[str, ThreadServer], gateway: SigningGateway
) -> None:
    """Every kind of record the generator writes is answered 200 by its connector (its shapes, its references)."""

    def first(db: str, column: sa.Column[Any], *where: Any, n: int = 10) -> list[str]:
        engine = sa.create_engine(generated[db])
        with engine.connect() as conn:
            rows = [str(r[0]) for r in conn.execute(sa.select(column).where(*where).limit(n))]
        engine.dispose()
        assert rows, f"the generator wrote no {column}"
        return rows

    def get(name: str, path: str) -> httpx.Response:
        d = DEFINITIONS[name]
        return httpx.get(servers[name].url + path, headers={"X-Lienthong-Assertion": gateway.assertion(d.service_id)})

    for pid in first("population", population.persons.c.id, population.persons.c.restricted.is_(False)):
        assert get("population", f"/persons/{pid}").status_code == 200, pid
        assert get("population", f"/persons/{pid}/residence?at=2024-06-01").status_code in (200, 404)
    for hh in first("population", population.households.c.id):
        assert get("population", f"/households/{hh}/members").status_code == 200
    for code in first("business", business.enterprises.c.code):
        assert get("business-registry", f"/enterprises/{code}").status_code == 200, code
    for si in first("insurance", insurance.insured.c.si_number):
        assert get("insurance", f"/insured/{si}").status_code == 200, si
    for card in first("insurance", insurance.hi_cards.c.code):
        assert get("insurance", f"/cards/{card}").status_code == 200, card
    for birth in first("civil_status", civil_status.births.c.id, civil_status.births.c.province_code == "040", n=5):
        assert get("civil-status", f"/births/{birth}").status_code == 200, birth
    assert get("population", "/changes?since=0&limit=5").status_code == 200


def test_generated_files_are_sqlite(generated: dict[str, str]) -> None:
    assert all(Path(url.removeprefix("sqlite:///")).exists() for url in generated.values())
