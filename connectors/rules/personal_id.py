"""The 12-digit personal ID number (Circular 07/2016/TT-BCA): province, century and sex, birth year, serial.

Layout: digits 1-3 the province code of birth registration, digit 4 century and sex (1900s: male 0 / female 1,
2000s: 2/3, 2100s: 4/5, 2200s: 6/7, 2300s: 8/9), digits 5-6 the last two digits of the birth year, digits 7-12 a serial.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Literal

from connectors.rules import provinces
from connectors.rules.errors import RuleError

Sex = Literal["M", "F"]
SEXES: tuple[Sex, Sex] = ("M", "F")
FIRST_CENTURY = 1900
LAST_CENTURY = 2300
MAX_SERIAL = 999_999


class InvalidPersonalId(RuleError):
    """A personal ID number broke its layout, or disagrees with the record it belongs to."""


@dataclass(frozen=True, slots=True)
class PersonalIdParts:
    province: str
    sex: Sex
    birth_year: int
    serial: str


def parse(value: object, field: str = "id", *, today: dt.date | None = None) -> PersonalIdParts:
    """Split a personal ID into its parts, raising InvalidPersonalId naming `field` when any part is wrong."""
    if not isinstance(value, str) or len(value) != 12 or not value.isascii() or not value.isdigit():
        raise InvalidPersonalId(field, "a personal ID number is exactly 12 digits")
    if value[:3] not in provinces.PROVINCES:
        raise InvalidPersonalId(field, "digits 1-3 are not a province code of Circular 07/2016 Annex 1")
    code = int(value[3])
    sex: Sex = SEXES[code % 2]
    birth_year = FIRST_CENTURY + 100 * (code // 2) + int(value[4:6])
    if birth_year > (today or dt.date.today()).year:
        raise InvalidPersonalId(field, "digits 4-6 give a birth year in the future")
    return PersonalIdParts(province=value[:3], sex=sex, birth_year=birth_year, serial=value[6:])


def validate(value: object, field: str = "id") -> str:
    """Return `value` if it is a well-formed personal ID number, else raise InvalidPersonalId naming `field`."""
    parse(value, field)
    assert isinstance(value, str)
    return value


def is_valid(value: object) -> bool:
    try:
        parse(value)
    except InvalidPersonalId:
        return False
    return True


def check_against(value: object, sex: str, birth_date: dt.date, field: str = "id") -> str:
    """Return `value` if its sex and birth year agree with the record's, else raise InvalidPersonalId.

    `sex` is "M" or "F". A record whose sex or birth year disagrees with its ID is invalid (DOMAIN: personal ID).
    """
    parts = parse(value, field)
    if sex not in SEXES:
        raise InvalidPersonalId("sex", "sex is M or F")
    if parts.sex != sex:
        raise InvalidPersonalId(field, "digit 4 (century and sex) disagrees with the record's sex")
    if parts.birth_year != birth_date.year:
        raise InvalidPersonalId(field, "digits 4-6 (century and year) disagree with the record's birth year")
    assert isinstance(value, str)
    return value


def century_sex_digit(sex: str, birth_year: int) -> int:
    """Digit 4: 2 * (centuries since 1900) + 0 for male, 1 for female."""
    if sex not in SEXES:
        raise InvalidPersonalId("sex", "sex is M or F")
    if not FIRST_CENTURY <= birth_year < LAST_CENTURY + 100:
        raise InvalidPersonalId("birth_date", "a personal ID covers birth years 1900-2399")
    return 2 * ((birth_year - FIRST_CENTURY) // 100) + (1 if sex == "F" else 0)


def make(province: str, sex: str, birth_date: dt.date, serial: int) -> str:
    """Build the personal ID of a person registered in `province`, with a 6-digit `serial` (0-999999)."""
    provinces.validate(province, "province")
    if not 0 <= serial <= MAX_SERIAL:
        raise InvalidPersonalId("serial", "the serial (digits 7-12) is 0-999999")
    return f"{province}{century_sex_digit(sex, birth_date.year)}{birth_date.year % 100:02d}{serial:06d}"
