"""Legal statuses of an enterprise (Decree 01/2021/NĐ-CP art. 41): stable codes and their Vietnamese labels."""

from __future__ import annotations

from connectors.rules.errors import RuleError

LEGAL_STATUSES: dict[str, str] = {
    "active": "Đang hoạt động",
    "suspended": "Tạm ngừng kinh doanh",
    "not_at_registered_address": "Không hoạt động tại địa chỉ đã đăng ký",
    "revoked_tax_enforcement": "Bị thu hồi Giấy chứng nhận đăng ký doanh nghiệp do cưỡng chế về quản lý thuế",
    "in_dissolution_or_restructuring": "Đang làm thủ tục giải thể, chia, hợp nhất, sáp nhập hoặc bị mua lại",
    "in_bankruptcy": "Đang làm thủ tục phá sản",
    "ceased": "Đã giải thể, phá sản, chấm dứt tồn tại",
}


class InvalidLegalStatus(RuleError):
    """Not one of the legal status codes."""


def validate(code: object, field: str = "legal_status") -> str:
    if not isinstance(code, str) or code not in LEGAL_STATUSES:
        raise InvalidLegalStatus(field, "a legal status is one of " + ", ".join(LEGAL_STATUSES))
    return code


def label(code: str) -> str:
    return LEGAL_STATUSES[validate(code)]
