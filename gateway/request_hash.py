"""X-Road-Request-Hash as PR-REST 1.0.4 §4.3 defines it: base64 of SHA512(SHA512(headers) + SHA512(body)), or of
SHA512(headers) when the request has no body.

PR-REST does not say how the headers are put into bytes, so lienthong fixes it (docs/protocol.md §3): the request
line `METHOD TARGET HTTP/1.1\\r\\n` (the target as sent: `/r1/<service>/<path>[?query]`), then every header field as
`name: value\\r\\n`, names lower-case, sorted by name. The request line is in because a hash that leaves out the
method and the target cannot tie an answer to the request that asked for it. The fields a hop adds or rewrites
(`HOP_FIELDS`) are left out, so the home gateway can compute, over what it sent, the very hash the hosting gateway
computes over what it received, and refuse an answer whose hash differs (§4.3: "created by the service provider's
Security Server and ... verified by the service client's Security Server").
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable

HOP_FIELDS = frozenset(
    {
        "host", "content-length", "transfer-encoding", "connection", "keep-alive", "te", "trailer", "upgrade",
        "proxy-connection", "proxy-authorization", "expect", "user-agent", "x-road-request-hash",
    }
)  # fmt: skip


def head_bytes(method: str, target: str, headers: Iterable[tuple[str, str]]) -> bytes:
    """The request line and the hashed header fields, as PR-REST's `headers` input."""
    fields = sorted((name.lower(), value) for name, value in headers if name.lower() not in HOP_FIELDS)
    lines = [f"{method} {target} HTTP/1.1\r\n"]
    lines.extend(f"{name}: {value}\r\n" for name, value in fields)
    return "".join(lines).encode("latin-1", "replace")


def request_hash(method: str, target: str, headers: Iterable[tuple[str, str]], body: bytes) -> str:
    head = hashlib.sha512(head_bytes(method, target, headers)).digest()
    if not body:
        return base64.b64encode(head).decode()
    return base64.b64encode(hashlib.sha512(head + hashlib.sha512(body).digest()).digest()).decode()
