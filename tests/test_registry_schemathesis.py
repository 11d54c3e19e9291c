"""Property-based run of schemathesis against the live registry: for every operation of openapi/registry.yaml,
generated valid and invalid requests (with an admin token) must never get a 5xx nor a response that breaks the
spec (status code, content type, headers, body schema)."""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.core.parameters import ParameterLocation
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from lienthong import keys
from registry.app import SPEC
from tests.registry_support import RegistryHandle

SCHEMA = schemathesis.openapi.from_path(SPEC)
OPERATIONS = [result.ok() for result in SCHEMA.get_all_operations()]
EXAMPLES = 10
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


@pytest.fixture(scope="module")
def live(registry: RegistryHandle) -> RegistryHandle:
    """A small world so that generated reads and writes sometimes hit real objects."""
    admin = registry.admin_client()
    admin.add_gateway("national", "http://127.0.0.1:8700", [keys.public_jwk(keys.generate())])
    admin.add_member("VN/GOV/BCA", "Ministry of Public Security", "national")
    admin.add_subsystem("VN/GOV/BCA/population", "Population")
    doc = {
        "openapi": "3.0.3",
        "info": {"title": "P", "version": "1"},
        "paths": {"/persons/{id}": {"get": {"parameters": [{"name": "id", "in": "path"}]}}},
    }
    admin.register_service(
        "VN/GOV/BCA/population/persons", openapi=doc, gateway="national", upstream_url="http://127.0.0.1:1", name="P"
    )
    return registry


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=["valid", "invalid"])
@pytest.mark.parametrize("operation", OPERATIONS, ids=[op.label for op in OPERATIONS])
def test_registry_conforms_to_its_spec(live: RegistryHandle, operation: Any, mode: GenerationMode) -> None:
    admin = live.admin_client()
    checks = [*CHECKS, negative_data_rejection] if mode == GenerationMode.NEGATIVE else CHECKS

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def run(case: Any) -> None:
        # a fresh token per case: the spec's security scheme is a bearer JWT, which schemathesis cannot mint. A
        # negative case whose broken part is its headers keeps them as generated: its invalid part may be the
        # Authorization header itself, and a valid token put over it would turn the case into a valid request.
        headers = {} if _negative_headers(case) else {"Authorization": f"Bearer {admin.token()}"}
        if case.operation.path == "/snapshot" and isinstance(case.query, dict):
            case.query["wait"] = 0  # a long poll only makes the run slower, not better
        case.call_and_validate(base_url=live.url + "/v1", session=session, headers=headers, checks=checks, timeout=10)

    with live.requests_session() as session:
        run()


def _negative_headers(case: Any) -> bool:
    info = case.meta.components.get(ParameterLocation.HEADER) if case.meta is not None else None
    return info is not None and info.mode == GenerationMode.NEGATIVE
