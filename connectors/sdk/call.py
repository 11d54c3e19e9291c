"""What a handler knows about the call it answers: the verified gateway assertion and the app's runtime.

Both travel in context variables set by the SDK's ASGI wrapper for each request, so several connectors can share one
process (tests do) and synchronous handlers run in the thread pool still see them (anyio copies the context).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lienthong.problem import Problem

if TYPE_CHECKING:
    from connectors.sdk.runtime import Runtime


@dataclass(frozen=True, slots=True)
class CallInfo:
    """The verified claims of the hosting gateway's assertion (protocol §4.2)."""

    consumer: str  # `sub`: the consumer subsystem id
    purpose: str | None
    fields: tuple[str, ...] | None  # dotted paths the grant allows; None means every field
    transaction_id: str  # `txn`: the call's X-Road-Id (`jti` is the gateway's nonce; used when txn is absent)
    gateway: str  # `iss`
    service: str | None = None
    grant: str | None = None
    user_id: str | None = None
    issue: str | None = None

    @classmethod
    def from_claims(cls, claims: Mapping[str, Any]) -> CallInfo:
        fields = claims.get("fields")
        return cls(
            consumer=str(claims["sub"]),
            purpose=claims.get("purpose"),
            fields=None if fields is None else tuple(str(f) for f in fields),
            transaction_id=str(claims.get("txn") or claims["jti"]),
            gateway=str(claims["iss"]),
            service=claims.get("svc"),
            grant=claims.get("grant"),
            user_id=claims.get("uid"),
            issue=claims.get("issue"),
        )

    def allows(self, path: str) -> bool:
        """True if the grant lets this dotted path out: granted itself, under a granted parent, or a granted child's
        parent (then the parent is returned with only its granted children)."""
        if self.fields is None:
            return True
        for granted in self.fields:
            if path == granted or path.startswith(granted + ".") or granted.startswith(path + "."):
                return True
        return False

    def granted(self, paths: Iterable[str]) -> list[str]:
        """The subset of `paths` (leaf dotted paths an endpoint can return) this call may see."""
        if self.fields is None:
            return list(paths)
        wanted = paths if isinstance(paths, tuple) else tuple(paths)
        key = (self.fields, wanted)
        found = _GRANTED.get(key)
        if found is None:
            if len(_GRANTED) >= _GRANTED_MAX:
                _GRANTED.clear()
            found = _GRANTED[key] = tuple(p for p in wanted if self.allows(p))
        return list(found)

    def require_any(self, paths: Iterable[str]) -> list[str]:
        """The granted subset of `paths`, or 403 `not-permitted` when the grant leaves nothing of them.

        Call it only after the record is known to exist, so that no data (404) and not permitted (403) stay apart.
        """
        granted = self.granted(paths)
        if not granted:
            raise not_permitted()
        return granted


# (grant fields, endpoint paths) -> the granted paths: few grants and endpoints, and every call asks again
_GRANTED: dict[tuple[tuple[str, ...], tuple[str, ...]], tuple[str, ...]] = {}
_GRANTED_MAX = 4096

_call: ContextVar[CallInfo] = ContextVar("lienthong_call")
_runtime: ContextVar[Runtime] = ContextVar("lienthong_runtime")


def current_call() -> CallInfo:
    """The verified assertion of the request being answered."""
    return _call.get()


def current_runtime() -> Runtime:
    """The runtime (database engine, config) of the connector answering the request."""
    return _runtime.get()


def set_call(info: CallInfo) -> object:
    return _call.set(info)


def set_runtime(runtime: Runtime) -> object:
    return _runtime.set(runtime)


def not_found(detail: str = "no data for this request") -> Problem:
    return Problem(404, "not-found", detail)


def not_permitted(detail: str = "the data exists but this consumer is not permitted to see it") -> Problem:
    return Problem(403, "not-permitted", detail)


def nest(flat: Mapping[str, Any]) -> dict[str, Any]:
    """{"household.id": 1, "full_name": "x"} -> {"household": {"id": 1}, "full_name": "x"}."""
    out: dict[str, Any] = {}
    for path, value in flat.items():
        node = out
        *parents, leaf = path.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out
