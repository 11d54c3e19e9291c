"""Enterprise codes (= tax codes): 10 digits with a check digit N10, and branch codes `NNNNNNNNNN-NNN`.

N10 is the Vietnamese tax code check digit: weights 31, 29, 23, 19, 17, 13, 7, 5, 3 over N1..N9,
N10 = 10 - (sum mod 11). A computed value of 10 has no digit, so such N1..N9 are never issued and are invalid here.
A dependent unit (branch) adds "-" and three digits 001-999 to its parent's code.
"""

from __future__ import annotations

from connectors.rules.errors import RuleError

WEIGHTS = (31, 29, 23, 19, 17, 13, 7, 5, 3)


class InvalidEnterpriseCode(RuleError):
    """An enterprise or branch code broke its layout or its check digit."""


def check_digit(first9: str) -> int | None:
    """N10 for N1..N9, or None when the computed value is 10 (the weighted sum is divisible by 11: never issued)."""
    if len(first9) != 9 or not first9.isascii() or not first9.isdigit():
        raise InvalidEnterpriseCode("code", "N1..N9 are 9 digits")
    value = 10 - sum(w * int(d) for w, d in zip(WEIGHTS, first9, strict=True)) % 11
    if value == 10:
        return None
    return value


def validate(value: object, field: str = "code", *, allow_branch: bool = True) -> str:
    """Return `value` if it is a valid enterprise code (or branch code when allowed), else raise naming `field`."""
    if not isinstance(value, str) or not value.isascii():
        raise InvalidEnterpriseCode(field, "an enterprise code is 10 digits, a branch code 10 digits, '-', 3 digits")
    main, dash, suffix = value.partition("-")
    if len(main) != 10 or not main.isdigit():
        raise InvalidEnterpriseCode(field, "an enterprise code is 10 digits, a branch code 10 digits, '-', 3 digits")
    if dash:
        if not allow_branch:
            raise InvalidEnterpriseCode(field, "a branch code is not accepted here, give the enterprise's 10 digits")
        if len(suffix) != 3 or not suffix.isdigit() or suffix == "000":
            raise InvalidEnterpriseCode(field, "a branch suffix is 3 digits 001-999")
    expected = check_digit(main[:9])
    if expected is None:
        raise InvalidEnterpriseCode(field, "digits 1-9 give check value 10, which is never issued")
    if int(main[9]) != expected:
        raise InvalidEnterpriseCode(field, "check digit (digit 10) does not match digits 1-9")
    return value


def is_valid(value: object) -> bool:
    try:
        validate(value)
    except InvalidEnterpriseCode:
        return False
    return True


def is_branch(code: str) -> bool:
    return "-" in validate(code)


def parent_of(code: str) -> str | None:
    """The parent enterprise's code of a branch code, None for an enterprise."""
    main, _, suffix = validate(code).partition("-")
    return main if suffix else None


def make(first9: str) -> str:
    """The 10-digit code for N1..N9; raises InvalidEnterpriseCode when those digits give check value 10."""
    digit = check_digit(first9)
    if digit is None:
        raise InvalidEnterpriseCode("code", "digits 1-9 give check value 10, which is never issued")
    return f"{first9}{digit}"


def make_branch(parent: str, number: int) -> str:
    """The code of branch `number` (1-999) of `parent`."""
    validate(parent, "parent_code", allow_branch=False)
    if not 1 <= number <= 999:
        raise InvalidEnterpriseCode("branch", "a branch number is 1-999")
    return f"{parent}-{number:03d}"
