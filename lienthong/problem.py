"""RFC 9457 problem details: the one error shape every API of the mesh answers with (docs/protocol.md section 6)."""

from __future__ import annotations

from typing import Any

import orjson

PROBLEM_MEDIA_TYPE = "application/problem+json"
TYPE_BASE = "https://lienthong.gov.vn/problems/"

TITLES: dict[int, str] = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    406: "Not Acceptable",
    408: "Request Timeout",
    409: "Conflict",
    412: "Precondition Failed",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    421: "Misdirected Request",
    422: "Unprocessable Content",
    428: "Precondition Required",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


class Problem(Exception):
    """An error answered as application/problem+json; `code` is the stable machine-readable type."""

    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        *,
        field: str | None = None,
        headers: dict[str, str] | None = None,
        xroad: str | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.field = field
        self.headers = headers or {}
        # the X-Road error type when the code alone does not decide it (gateway/xroad_errors.py)
        self.xroad = xroad
        self.xroad_relayed = False  # the hosting gateway's refusal, passed on by the home gateway
        self.extra = extra

    def to_dict(self, instance: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": TYPE_BASE + self.code,
            "title": TITLES.get(self.status, "Error"),
            "status": self.status,
            "detail": self.detail,
            "code": self.code,
        }
        if self.field is not None:
            body["field"] = self.field
        if instance is not None:
            body["instance"] = instance
        body.update(self.extra)
        return body

    def to_bytes(self, instance: str | None = None) -> bytes:
        return orjson.dumps(self.to_dict(instance))


def bad_request(field: str, detail: str, code: str = "invalid-parameter") -> Problem:
    """A 400 that names the offending field, as every API must."""
    return Problem(400, code, detail, field=field)
