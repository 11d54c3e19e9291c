"""schemathesis on live processes THROUGH the gateway (issue 7): each connector's OpenAPI document, served under the
gateway's /r1/{service id} base path with a valid client token, X-Road-Client and X-Purpose, must give no 5xx and
no documented answer off its schema; and the gateway's own operations API (the parts test_dashboard_api does not
fuzz) on a live gateway. The registry and the connectors directly are fuzzed in test_registry_schemathesis and
test_connector_schemathesis. The mesh runs TLS on every link: schemathesis calls over HTTPS, verifying the gateways
by chain to the mesh CA. `make fuzz` (--schemathesis-long) runs many more examples."""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from bench.chaos_mesh import ChaosMesh, shared
from gateway.ops_api import SPEC as OPS_SPEC
from gateway.ops_auth import operator_token_from
from lienthong import keys, tokens
from lienthong.cli.mesh_layout import (
    BIRTH,
    BUSINESS,
    CIVIL_STATUS,
    CONNECTORS,
    INSURANCE,
    LICENSING,
    MOJ,
    NGHEAN_CIVIL,
    POPULATION,
    VERIFY,
)
from tests.ops_support import schemathesis_headers
from tests.procs import requests_session

SHORT, LONG = 8, 200
# service -> (consumer, home gateway, purpose): grants with every endpoint and every field (mesh_layout.GRANTS)
CALLERS = {
    POPULATION: (MOJ, "national", VERIFY),
    BUSINESS: (MOJ, "national", LICENSING),
    INSURANCE: (NGHEAN_CIVIL, "nghean", BIRTH),
    CIVIL_STATUS: (NGHEAN_CIVIL, "nghean", BIRTH),
}
SPECS = {c.service: c.spec_file for c in CONNECTORS}
OPS_FUZZED_HERE = ("/transactions", "/latency", "/audit", "/health")


@pytest.fixture(scope="module")
def cm(tmp_path_factory: pytest.TempPathFactory) -> ChaosMesh:
    return shared(tmp_path_factory.mktemp("chaos-mesh"))


def _examples(request: pytest.FixtureRequest) -> int:
    try:
        return LONG if request.config.getoption("--schemathesis-long") else SHORT
    except ValueError:
        return SHORT


def _operations(path: Any, only: tuple[str, ...] | None = None) -> list[Any]:
    results = schemathesis.openapi.from_path(path).get_all_operations()
    return [r.ok() for r in results if isinstance(r, Ok) and (only is None or r.ok().path in only)]


@pytest.mark.parametrize("service", list(CALLERS))
def test_schemathesis_connector_specs_through_the_gateway(
    cm: ChaosMesh, service: str, request: pytest.FixtureRequest
) -> None:
    from pathlib import Path

    consumer, home, purpose = CALLERS[service]
    key = keys.load_private(cm.key_file(consumer))
    kid = cm.mesh.kids[consumer]
    spec = Path(__file__).resolve().parent.parent / "openapi" / SPECS[service]
    base = f"{cm.mesh.gateway_urls[home]}/r1/{service}"
    failures: list[str] = []
    for operation in _operations(spec):

        @given(case=operation.as_strategy(generation_mode=GenerationMode.POSITIVE))
        @settings(max_examples=_examples(request), deadline=None, database=None,
                  phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))  # fmt: skip
        def run(case: Any) -> None:
            token = tokens.sign(key, kid, {"iss": consumer, "sub": consumer, "aud": home})
            headers = {"Authorization": f"Bearer {token}", "X-Road-Client": consumer, "X-Purpose": purpose}
            case.call_and_validate(base_url=base, session=session, headers=headers, timeout=15,
                                   checks=[not_a_server_error, response_schema_conformance])  # fmt: skip

        with requests_session(cm.mesh.verify) as session:
            try:
                run()
            except Exception as exc:  # every operation's failure, not just the first
                failures.append(f"{operation.label}: {exc}")
    assert not failures, "\n\n".join(failures)


OPS_OPERATIONS = _operations(OPS_SPEC, OPS_FUZZED_HERE)


# an operation without parameters (GET /health) has no invalid request to make
OPS_CASES = [
    pytest.param(op, mode, id=f"{op.label}-{'valid' if mode == GenerationMode.POSITIVE else 'invalid'}")
    for op in OPS_OPERATIONS
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    if mode == GenerationMode.POSITIVE or op.path != "/health"
]


@pytest.mark.parametrize(("operation", "mode"), OPS_CASES)
def test_schemathesis_gateway_ops_api_live(
    cm: ChaosMesh, operation: Any, mode: GenerationMode, request: pytest.FixtureRequest
) -> None:
    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
    if mode == GenerationMode.NEGATIVE:
        checks.append(negative_data_rejection)

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=_examples(request), deadline=None, database=None, phases=[Phase.explicit, Phase.generate],
              suppress_health_check=list(HealthCheck))  # fmt: skip
    def run(case: Any) -> None:
        headers = schemathesis_headers(case, {"Authorization": f"Bearer {token}"})
        case.call_and_validate(base_url=f"{cm.mesh.gateway_urls['hanoi']}/ops/v1", session=session, checks=checks,
                               timeout=15, headers=headers)  # fmt: skip

    token = operator_token_from(cm.mesh.config.paths.gateway("hanoi"), "hanoi")
    with requests_session(cm.mesh.verify) as session:
        run()
