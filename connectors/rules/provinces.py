"""The 63 province codes of Circular 07/2016/TT-BCA Annex 1 (digits 1-3 of a personal ID) and their names."""

from __future__ import annotations

from connectors.rules.errors import RuleError

# code -> Vietnamese name; the codes in force before the 1/7/2025 mergers (IDs keep the birth registration code).
PROVINCES: dict[str, str] = {
    "001": "Hà Nội", "002": "Hà Giang", "004": "Cao Bằng", "006": "Bắc Kạn", "008": "Tuyên Quang",
    "010": "Lào Cai", "011": "Điện Biên", "012": "Lai Châu", "014": "Sơn La", "015": "Yên Bái",
    "017": "Hòa Bình", "019": "Thái Nguyên", "020": "Lạng Sơn", "022": "Quảng Ninh", "024": "Bắc Giang",
    "025": "Phú Thọ", "026": "Vĩnh Phúc", "027": "Bắc Ninh", "030": "Hải Dương", "031": "Hải Phòng",
    "033": "Hưng Yên", "034": "Thái Bình", "035": "Hà Nam", "036": "Nam Định", "037": "Ninh Bình",
    "038": "Thanh Hóa", "040": "Nghệ An", "042": "Hà Tĩnh", "044": "Quảng Bình", "045": "Quảng Trị",
    "046": "Thừa Thiên Huế", "048": "Đà Nẵng", "049": "Quảng Nam", "051": "Quảng Ngãi", "052": "Bình Định",
    "054": "Phú Yên", "056": "Khánh Hòa", "058": "Ninh Thuận", "060": "Bình Thuận", "062": "Kon Tum",
    "064": "Gia Lai", "066": "Đắk Lắk", "067": "Đắk Nông", "068": "Lâm Đồng", "070": "Bình Phước",
    "072": "Tây Ninh", "074": "Bình Dương", "075": "Đồng Nai", "077": "Bà Rịa - Vũng Tàu", "079": "Hồ Chí Minh",
    "080": "Long An", "082": "Tiền Giang", "083": "Bến Tre", "084": "Trà Vinh", "086": "Vĩnh Long",
    "087": "Đồng Tháp", "089": "An Giang", "091": "Kiên Giang", "092": "Cần Thơ", "093": "Hậu Giang",
    "094": "Sóc Trăng", "095": "Bạc Liêu", "096": "Cà Mau",
}  # fmt: skip

PROVINCE_CODES: tuple[str, ...] = tuple(PROVINCES)


class InvalidProvince(RuleError):
    """Not one of the 63 province codes."""


def validate(code: object, field: str = "province_code") -> str:
    """Return `code` if it is one of the 63 three-digit province codes, else raise InvalidProvince."""
    if not isinstance(code, str) or len(code) != 3 or not code.isascii() or not code.isdigit():
        raise InvalidProvince(field, "a province code is 3 digits, e.g. 001 (Hà Nội)")
    if code not in PROVINCES:
        raise InvalidProvince(field, "not a province code of Circular 07/2016 Annex 1")
    return code


def name(code: str) -> str:
    """The Vietnamese name of a province code (validated)."""
    return PROVINCES[validate(code)]
