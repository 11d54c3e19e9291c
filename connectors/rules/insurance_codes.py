"""Social insurance numbers and health insurance card codes (Vietnam Social Security, Decision 1351/QĐ-BHXH layout).

- Social insurance (SI) number: 10 digits, given for life; it is also the lifelong medical code.
- Health insurance card code: 15 characters `XX X XX XXXXXXXXXX` = beneficiary category (2 letters), benefit level
  (1-5), 2-digit province code, SI number.

Province part, a stated simplification: we take the two-digit administrative province code of Decision
124/2004/QĐ-TTg, which is the last two digits of the 3-digit code of Circular 07/2016 (Hà Nội 01, Hồ Chí Minh 79).
We could not confirm whether the codes Vietnam Social Security prints on cards differ for some provinces; the
mapping lives only in `HI_PROVINCE_CODES`, so correcting it is a one-table change.
"""

from __future__ import annotations

from dataclasses import dataclass

from connectors.rules import provinces
from connectors.rules.errors import RuleError

# Beneficiary category -> the benefit level it is usually issued with (1: 100% no cap, 2: 100% with cap, 3: 95%,
# 4: 80%, 5: 100% armed forces). Validation accepts any level 1-5 for any category; the generator uses these.
CATEGORIES: dict[str, int] = {
    "DN": 4, "HX": 4, "CH": 4, "NN": 4, "TK": 4, "HC": 4, "XK": 4, "HT": 3, "TB": 4, "NO": 4, "XB": 4, "TN": 4,
    "CS": 4, "XN": 4, "MS": 4, "HD": 4, "TQ": 4, "TA": 4, "TY": 4, "HG": 4, "LS": 4, "HS": 4, "SV": 4, "GB": 4,
    "GD": 4, "CC": 1, "TE": 1, "CK": 2, "CB": 2, "KC": 2, "HN": 2, "DT": 2, "DK": 2, "XD": 2, "BT": 2, "TS": 2,
    "TC": 3, "CN": 3, "QN": 5, "CA": 5, "CY": 5, "PV": 4, "XV": 4,
}  # fmt: skip
CHILD_CATEGORY = "TE"  # children under 6
BENEFIT_LEVELS = (1, 2, 3, 4, 5)

HI_PROVINCE_CODES: dict[str, str] = {code: code[1:] for code in provinces.PROVINCE_CODES}
_PROVINCE_OF_HI_CODE: dict[str, str] = {v: k for k, v in HI_PROVINCE_CODES.items()}


class InvalidInsuranceCode(RuleError):
    """A social insurance number or health insurance card code broke its layout."""


@dataclass(frozen=True, slots=True)
class CardParts:
    category: str
    benefit_level: int
    province_code: str  # the 3-digit province code the card's 2-digit code stands for
    si_number: str


def validate_si_number(value: object, field: str = "si_number") -> str:
    """Return `value` if it is a 10-digit social insurance number, else raise InvalidInsuranceCode naming `field`."""
    if not isinstance(value, str) or len(value) != 10 or not value.isascii() or not value.isdigit():
        raise InvalidInsuranceCode(field, "a social insurance number is exactly 10 digits")
    if value == "0000000000":
        raise InvalidInsuranceCode(field, "a social insurance number is never all zeros")
    return value


def parse_card(value: object, field: str = "code") -> CardParts:
    """Split a 15-character card code into its parts, naming the wrong part when one is."""
    if not isinstance(value, str) or len(value) != 15 or not value.isascii():
        raise InvalidInsuranceCode(field, "a health insurance card code is 15 characters: XX X XX XXXXXXXXXX")
    category, level, province2, si_number = value[:2], value[2], value[3:5], value[5:]
    if category not in CATEGORIES:
        raise InvalidInsuranceCode(field, "characters 1-2 are not a beneficiary category (DN, HT, TE, ...)")
    if level not in "12345":
        raise InvalidInsuranceCode(field, "character 3 (benefit level) is 1-5")
    if province2 not in _PROVINCE_OF_HI_CODE:
        raise InvalidInsuranceCode(field, "characters 4-5 are not a province code")
    try:
        validate_si_number(si_number, field)
    except InvalidInsuranceCode:
        raise InvalidInsuranceCode(field, "characters 6-15 are not a social insurance number (10 digits)") from None
    return CardParts(category, int(level), _PROVINCE_OF_HI_CODE[province2], si_number)


def validate_card(value: object, field: str = "code") -> str:
    """Return `value` if it is a well-formed health insurance card code, else raise InvalidInsuranceCode."""
    parse_card(value, field)
    assert isinstance(value, str)
    return value


def make_card(category: str, benefit_level: int, province_code: str, si_number: str) -> str:
    """The card code for these parts; `province_code` is the 3-digit code (see HI_PROVINCE_CODES)."""
    if category not in CATEGORIES:
        raise InvalidInsuranceCode("category", "not a beneficiary category (DN, HT, TE, ...)")
    if benefit_level not in BENEFIT_LEVELS:
        raise InvalidInsuranceCode("benefit_level", "the benefit level is 1-5")
    provinces.validate(province_code)
    validate_si_number(si_number)
    return f"{category}{benefit_level}{HI_PROVINCE_CODES[province_code]}{si_number}"
