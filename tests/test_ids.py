"""Identifier rules (protocol §1)."""

from __future__ import annotations

import pytest

from lienthong.ids import InvalidIdentifier, parse, validate


@pytest.mark.parametrize(
    ("kind", "value"),
    [
        ("member", "VN/GOV/BCA"),
        ("member", "VN/PROV/NGHEAN"),
        ("subsystem", "VN/GOV/BCA/population"),
        ("service", "VN/GOV/BCA/population/persons"),
        ("gateway", "national"),
        ("version", "v2.1"),
    ],
)
def test_valid_identifiers_pass(kind: str, value: str) -> None:
    assert validate(kind, value) == value  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kind", "value", "reason"),
    [
        ("member", "FI/GOV/BCA", "instance"),
        ("member", "VN/COM/BCA", "member class"),
        ("member", "VN/GOV", "shape"),
        ("subsystem", "VN/GOV/BCA/pop:ulation", "character rules"),
        ("subsystem", "VN/GOV/BCA/pop%2F", "character rules"),
        ("service", "VN/GOV/BCA/population/", "character rules"),
        ("service", "VN/GOV/BCA/population/a;b", "character rules"),
        ("gateway", "National", "gateway code"),
        ("version", "1.0", "version"),
    ],
)
def test_invalid_identifiers_name_the_field(kind: str, value: str, reason: str) -> None:
    with pytest.raises(InvalidIdentifier) as caught:
        validate(kind, value, field="body.id")  # type: ignore[arg-type]
    assert caught.value.field == "body.id"
    assert reason in caught.value.reason


def test_parse_splits_parts() -> None:
    ident = parse("service", "VN/GOV/BCA/population/persons")
    assert ident.member == "VN/GOV/BCA"
    assert ident.subsystem_id == "VN/GOV/BCA/population"
    assert ident.service_code == "persons"
    assert str(ident) == "VN/GOV/BCA/population/persons"
