"""Domain validators: personal IDs, provinces, enterprise codes, insurance codes, legal statuses, name folding."""

from __future__ import annotations

import datetime as dt

import pytest

from connectors.rules import RuleError, enterprise_code, insurance_codes, legal_status, personal_id, provinces
from connectors.rules.vietnamese import fold
from lienthong.problem import Problem


def test_provinces_are_the_63_of_circular_07():
    assert len(provinces.PROVINCES) == 63
    assert provinces.name("001") == "Hà Nội"
    assert provinces.name("079") == "Hồ Chí Minh"
    for bad in ("003", "97", "0001", "abc", None):
        with pytest.raises(provinces.InvalidProvince):
            provinces.validate(bad)


@pytest.mark.parametrize(
    ("province", "sex", "born", "expected"),
    [
        ("001", "M", dt.date(1985, 3, 2), "001085000042"),
        ("001", "F", dt.date(1985, 3, 2), "001185000042"),
        ("079", "M", dt.date(2003, 1, 1), "079203000042"),
        ("096", "F", dt.date(2019, 12, 31), "096319000042"),
    ],
)
def test_make_encodes_province_century_sex_and_year(province, sex, born, expected):
    made = personal_id.make(province, sex, born, 42)
    assert made == expected
    assert personal_id.check_against(made, sex, born) == made
    parts = personal_id.parse(made)
    assert (parts.province, parts.sex, parts.birth_year) == (province, sex, born.year)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("00108500004", "12 digits"),
        ("0010850000421", "12 digits"),
        ("00108500004a", "12 digits"),
        ("".join(chr(0xFF10 + int(d)) for d in "001085000042"), "12 digits"),  # full-width digits
        ("003085000042", "province"),
        ("097085000042", "province"),
        ("001999000042", "future"),  # 2399
        (12345678901, "12 digits"),
    ],
)
def test_invalid_personal_ids_name_the_wrong_part(value, reason):
    with pytest.raises(personal_id.InvalidPersonalId) as info:
        personal_id.validate(value, "father_id")
    assert info.value.field == "father_id"
    assert reason in str(info.value)
    assert not personal_id.is_valid(value)


def test_check_against_refuses_sex_or_year_disagreement():
    male_1985 = personal_id.make("001", "M", dt.date(1985, 3, 2), 7)
    with pytest.raises(personal_id.InvalidPersonalId, match="sex"):
        personal_id.check_against(male_1985, "F", dt.date(1985, 3, 2))
    with pytest.raises(personal_id.InvalidPersonalId, match="birth year"):
        personal_id.check_against(male_1985, "M", dt.date(1986, 3, 2))
    with pytest.raises(personal_id.InvalidPersonalId, match="birth year"):
        personal_id.check_against(male_1985, "M", dt.date(2085, 3, 2))  # right year digits, wrong century
    with pytest.raises(personal_id.InvalidPersonalId, match="M or F"):
        personal_id.check_against(male_1985, "X", dt.date(1985, 3, 2))


def test_make_refuses_bad_parts():
    with pytest.raises(provinces.InvalidProvince):
        personal_id.make("003", "M", dt.date(1985, 1, 1), 1)
    with pytest.raises(personal_id.InvalidPersonalId, match="serial"):
        personal_id.make("001", "M", dt.date(1985, 1, 1), 1_000_000)
    with pytest.raises(personal_id.InvalidPersonalId, match="1900-2399"):
        personal_id.make("001", "M", dt.date(1899, 1, 1), 1)


def test_errors_are_value_errors_that_become_400_problems_without_the_value():
    with pytest.raises(ValueError) as info:
        personal_id.validate("003085000042", "id")
    error = info.value
    assert isinstance(error, RuleError)
    problem = error.to_problem()
    assert isinstance(problem, Problem)
    assert (problem.status, problem.code, problem.field) == (400, "invalid-parameter", "id")
    assert "003085000042" not in problem.detail


@pytest.mark.parametrize("code", ["0100107518", "0300588569", "0100109106"])
def test_real_tax_codes_pass(code):
    assert enterprise_code.validate(code) == code
    assert enterprise_code.make(code[:9]) == code
    assert enterprise_code.parent_of(code) is None


def test_enterprise_check_digit_and_branches():
    assert enterprise_code.check_digit("010010751") == 8
    with pytest.raises(enterprise_code.InvalidEnterpriseCode, match="check digit"):
        enterprise_code.validate("0100107519")
    branch = enterprise_code.make_branch("0100107518", 12)
    assert branch == "0100107518-012"
    assert enterprise_code.parent_of(branch) == "0100107518"
    assert enterprise_code.is_branch(branch)
    for bad in ("0100107518-000", "0100107518-1", "0100107518-", "0100107518-1000", "010010751", "01001075180"):
        assert not enterprise_code.is_valid(bad), bad
    with pytest.raises(enterprise_code.InvalidEnterpriseCode, match="branch code is not accepted"):
        enterprise_code.validate(branch, allow_branch=False)
    with pytest.raises(enterprise_code.InvalidEnterpriseCode, match="1-999"):
        enterprise_code.make_branch("0100107518", 1000)


def test_check_value_ten_is_never_issued():
    # weighted sum divisible by 11 gives 10 - 0 = 10, which has no digit
    first9 = next(f"{n:09d}" for n in range(1, 10_000) if enterprise_code.check_digit(f"{n:09d}") is None)
    with pytest.raises(enterprise_code.InvalidEnterpriseCode, match="value 10"):
        enterprise_code.make(first9)
    for last in range(10):
        assert not enterprise_code.is_valid(first9 + str(last))


def test_social_insurance_numbers():
    assert insurance_codes.validate_si_number("7912345678") == "7912345678"
    for bad in ("791234567", "79123456789", "79123456a8", "0000000000", 7912345678):
        with pytest.raises(insurance_codes.InvalidInsuranceCode, match="si_number"):
            insurance_codes.validate_si_number(bad)


def test_card_code_round_trip():
    code = insurance_codes.make_card("TE", 1, "079", "7912345678")
    assert code == "TE1797912345678"
    parts = insurance_codes.parse_card(code)
    assert parts == insurance_codes.CardParts("TE", 1, "079", "7912345678")
    assert insurance_codes.validate_card("DN4017912345678") == "DN4017912345678"


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        ("ZZ1797912345678", "category"),
        ("te1797912345678", "category"),
        ("TE6797912345678", "benefit level"),
        ("TE0797912345678", "benefit level"),
        ("TE1977912345678", "province"),  # 97 is no province
        ("TE1037912345678", "province"),  # 03 is no province
        ("TE179791234567X", "social insurance"),
        ("TE1790000000000", "social insurance"),
        ("TE17979123456789", "15 characters"),
        ("TE179791234567", "15 characters"),
    ],
)
def test_bad_card_parts_are_named(code, reason):
    with pytest.raises(insurance_codes.InvalidInsuranceCode, match=reason) as info:
        insurance_codes.validate_card(code, "hi_card_code")
    assert info.value.field == "hi_card_code"


def test_make_card_refuses_bad_parts():
    with pytest.raises(insurance_codes.InvalidInsuranceCode, match="category"):
        insurance_codes.make_card("ZZ", 1, "079", "7912345678")
    with pytest.raises(insurance_codes.InvalidInsuranceCode, match="benefit"):
        insurance_codes.make_card("TE", 7, "079", "7912345678")
    with pytest.raises(provinces.InvalidProvince):
        insurance_codes.make_card("TE", 1, "003", "7912345678")


def test_legal_status_codes_and_labels():
    assert legal_status.label("active") == "Đang hoạt động"
    assert len(legal_status.LEGAL_STATUSES) == 7
    with pytest.raises(legal_status.InvalidLegalStatus, match="legal_status"):
        legal_status.validate("Đang hoạt động")


@pytest.mark.parametrize(
    ("text", "folded"),
    [
        ("Nguyễn Thị Đào", "nguyen thi dao"),
        ("ĐẶNG  VĂN   ĐỨC", "dang van duc"),
        ("Công ty TNHH Thương mại Hòa Bình", "cong ty tnhh thuong mai hoa binh"),
        ("Nguye\u0302\u0303n", "nguyen"),  # already decomposed input
        ("", ""),
    ],
)
def test_fold(text, folded):
    assert fold(text) == folded
