"""Identifiers of the mesh, after X-Road's model, with instance VN (docs/protocol.md section 1).

One function validates them all, so every API names the same field the same way when one is wrong.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

INSTANCE = "VN"
MEMBER_CLASSES = ("GOV", "PROV")

# X-Road forbids ':', ';', '/', '\\', '%' and non-printable characters in identifier parts.
# lienthong keeps a strict printable subset of that so identifiers are also safe in URLs, logs and Redis keys.
_PART = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,62}[A-Za-z0-9_])?$")
_VERSION = re.compile(r"^v[0-9]{1,4}(?:\.[0-9]{1,4}){0,2}$")
_GATEWAY = re.compile(r"^[a-z][a-z0-9-]{1,30}$")

Kind = Literal["member", "subsystem", "service", "gateway", "version", "part"]

_PARTS: dict[str, int] = {"member": 3, "subsystem": 4, "service": 5}


class InvalidIdentifier(ValueError):
    """An identifier broke the rules; `field` names the request field it came from."""

    def __init__(self, field: str, value: object, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.value = value
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Identifier:
    """A parsed member, subsystem or service identifier."""

    instance: str
    member_class: str
    member_code: str
    subsystem: str | None = None
    service_code: str | None = None

    @property
    def member(self) -> str:
        return f"{self.instance}/{self.member_class}/{self.member_code}"

    @property
    def subsystem_id(self) -> str:
        if self.subsystem is None:
            raise ValueError("not a subsystem identifier")
        return f"{self.member}/{self.subsystem}"

    def __str__(self) -> str:
        parts = [self.instance, self.member_class, self.member_code, self.subsystem, self.service_code]
        return "/".join(p for p in parts if p is not None)


def validate(kind: Kind, value: object, field: str | None = None) -> str:
    """Return `value` if it is a valid identifier of `kind`, else raise InvalidIdentifier naming `field`."""
    field = field or kind
    if not isinstance(value, str) or not value:
        raise InvalidIdentifier(field, value, f"a {kind} identifier is required")
    if kind == "gateway":
        if not _GATEWAY.match(value):
            raise InvalidIdentifier(field, value, "a gateway code is 2-31 lowercase letters, digits or '-'")
        return value
    if kind == "version":
        if not _VERSION.match(value):
            raise InvalidIdentifier(field, value, "a version looks like v1, v2.1 or v1.0.3")
        return value
    if kind == "part":
        if not _PART.match(value):
            raise InvalidIdentifier(field, value, "use 1-64 of A-Z a-z 0-9 . _ - (no '/', ':', ';', '%', '\\\\')")
        return value
    parse(kind, value, field)
    return value


def parse(kind: Literal["member", "subsystem", "service"], value: object, field: str | None = None) -> Identifier:
    """Parse a member (VN/CLASS/CODE), subsystem (+ /SUBSYSTEM) or service (+ /SERVICE) identifier."""
    field = field or kind
    if not isinstance(value, str) or not value:
        raise InvalidIdentifier(field, value, f"a {kind} identifier is required")
    parts = value.split("/")
    want = _PARTS[kind]
    if len(parts) != want:
        shape = ["VN", "CLASS", "MEMBER", "SUBSYSTEM", "SERVICE"][:want]
        raise InvalidIdentifier(field, value, f"a {kind} identifier has the shape {'/'.join(shape)}")
    if parts[0] != INSTANCE:
        raise InvalidIdentifier(field, value, f"the instance must be {INSTANCE}")
    if parts[1] not in MEMBER_CLASSES:
        raise InvalidIdentifier(field, value, f"the member class must be one of {', '.join(MEMBER_CLASSES)}")
    for part in parts[2:]:
        if not _PART.match(part):
            raise InvalidIdentifier(field, value, f"'{part}' breaks the character rules (A-Z a-z 0-9 . _ -, 1-64)")
    return Identifier(
        instance=parts[0],
        member_class=parts[1],
        member_code=parts[2],
        subsystem=parts[3] if want >= 4 else None,
        service_code=parts[4] if want >= 5 else None,
    )
