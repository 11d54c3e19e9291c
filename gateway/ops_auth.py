"""Who may read a gateway's operations API, and under which Host name.

Two kinds of bearer token, both JWTs (lienthong/tokens.py) whose `aud` is `ops:<gateway code>`, so a token made
for another gateway, or an /r1 client token (whose `aud` is the bare code), is refused here and an ops token is
refused at /r1:
- operator: signed by a key the gateway trusts as an operator key: its own key (whoever holds the gateway's data
  dir is its operator; `lienthong ops login` mints one) and any public JWK given with `--ops-operator-key`. It sees
  everything. At most OPERATOR_MAX_LIFETIME long.
- member: signed by one of a subsystem's client keys in the current snapshot, verified exactly as /r1 client
  tokens are (policies.authn.verify_client_token). It sees only what concerns its member: audit records, meter
  counts and errors where the member is the consumer or the provider (GovStack Information Mediator: each client
  sees its own records), and latency of the services it provides.

The Host header must name this gateway (its listen addresses, loopback, the base URL the registry lists for it,
`--ops-host` names), so a page of another site that rebinds its DNS name to the gateway's address cannot read the
API with a token it does not have, nor the loopback-only /metrics.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import orjson

from gateway.settings import KEY_FILE
from lienthong import keys, tokens
from lienthong.problem import Problem
from lienthong.snapshot import Snapshot
from policies.authn import verify_client_token

OPERATOR_ISSUER = "lienthong-ops"
OPERATOR_MAX_LIFETIME = 3600
DEFAULT_OPERATOR_LIFETIME = 900  # `lienthong ops login`'s default: 15 minutes
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
WILDCARD_HOSTS = ("", "0.0.0.0", "::")


def ops_audience(gateway: str) -> str:
    return f"ops:{gateway}"


def member_of(identifier: object) -> str | None:
    """The member (VN/CLASS/CODE) of a subsystem or service id; None when it is not one."""
    if not isinstance(identifier, str):
        return None
    parts = identifier.split("/")
    return "/".join(parts[:3]) if len(parts) >= 4 else None


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is asking: the operator (sees all) or one member (sees the calls it made or served)."""

    role: Literal["operator", "member"]
    subject: str  # the operator token's sub, or the member's subsystem
    member: str | None = None

    @property
    def operator(self) -> bool:
        return self.role == "operator"

    def involves(self, consumer: object, service: object) -> bool:
        return self.operator or self.member in (member_of(consumer), member_of(service))

    def keep_dims(self, dims: Sequence[str]) -> bool:
        """The meter's dimensions (consumer, service, ...): policies.meter_query's `keep`."""
        return self.involves(dims[0], dims[1])

    def keep_service(self, service: str) -> bool:
        """Latency histograms have no consumer: a member sees those of the services it provides."""
        return self.operator or member_of(service) == self.member

    def keep_record(self, record: dict[str, Any]) -> bool:
        return self.involves(record.get("client"), record.get("service"))


def mint_operator_token(
    key: keys.PrivateKey, kid: str, gateway: str, subject: str = "operator",
    lifetime: int = DEFAULT_OPERATOR_LIFETIME,
) -> str:  # fmt: skip
    claims = {"iss": OPERATOR_ISSUER, "sub": subject, "aud": ops_audience(gateway), "role": "operator"}
    return tokens.sign(key, kid, claims, lifetime=lifetime)


def mint_member_token(
    key: keys.PrivateKey, kid: str, subsystem: str, gateway: str, lifetime: int = tokens.MAX_CLIENT_TOKEN_LIFETIME
) -> str:
    claims = {"iss": subsystem, "sub": subsystem, "aud": ops_audience(gateway)}
    return tokens.sign(key, kid, claims, lifetime=lifetime)


def operator_token_from(data_dir: Path, gateway: str, lifetime: int = DEFAULT_OPERATOR_LIFETIME) -> str:
    """An operator token signed with the gateway's own key, read from its data dir (what `ops login` does)."""
    key = keys.load_private(Path(data_dir) / KEY_FILE)
    return mint_operator_token(key, keys.public_jwk(key)["kid"], gateway, lifetime=lifetime)


def load_operator_keys(paths: Iterable[Path]) -> dict[str, keys.PublicKey]:
    """kid -> key from public JWK files (one JWK, or a JSON list of them, or {"keys": [...]} per file)."""
    found: dict[str, keys.PublicKey] = {}
    for path in paths:
        try:
            doc = orjson.loads(Path(path).read_bytes())
            jwks = doc["keys"] if isinstance(doc, dict) and "keys" in doc else doc if isinstance(doc, list) else [doc]
            for jwk in jwks:
                found[jwk.get("kid") or keys.thumbprint(jwk)] = keys.public_key_from_jwk(jwk)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"--ops-operator-key {path}: not a public JWK file ({exc})") from exc
    return found


def _refused(detail: str) -> Problem:
    return Problem(401, "invalid-token", detail, field="Authorization",
                   headers={"WWW-Authenticate": 'Bearer realm="lienthong-ops", error="invalid_token"'})  # fmt: skip


def _split_host(value: str) -> tuple[str, int | None] | None:
    """'name[:port]' or '[v6][:port]' -> (lowercase name without brackets or trailing dot, port); None if malformed."""
    text = value.strip().lower()
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            return None
        name, rest = text[1:end], text[end + 1 :]
        if rest and not rest.startswith(":"):
            return None
        port_text = rest[1:] if rest else ""
    else:
        name, _, port_text = text.partition(":")
        if ":" in port_text:
            return None
    if not name or any(c.isspace() or c in "/\\@?#" for c in name):
        return None
    if port_text:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            return None
        return name.rstrip("."), int(port_text)
    return name.rstrip("."), None


def _canonical(name: str) -> str:
    try:
        return str(ipaddress.ip_address(name))
    except ValueError:
        return name


@dataclass(frozen=True, slots=True)
class HostNames:
    """The names a request's Host may carry: (name, port) pairs, port None meaning any port (a name behind a proxy);
    a Host without a port stands for the scheme's default port, which any entry of the name accepts."""

    entries: frozenset[tuple[str, int | None]]

    @classmethod
    def build(cls, listen: Iterable[tuple[str, int]], extra: Iterable[str] = ()) -> HostNames:
        entries: set[tuple[str, int | None]] = set()
        for host, port in listen:
            for name in (host, *LOOPBACK_NAMES) if host not in WILDCARD_HOSTS else LOOPBACK_NAMES:
                entries.add((_canonical(name.lower()), port))
        for name in extra:
            parsed = _split_host(name)
            if parsed is None:
                raise ValueError(f"--ops-host {name!r} is not a host name (NAME or NAME:PORT)")
            entries.add((_canonical(parsed[0]), parsed[1]))
        return cls(frozenset(entries))

    def allows(self, host: str, also: Iterable[tuple[str, int | None]] = ()) -> bool:
        parsed = _split_host(host)
        if parsed is None:
            return False
        name, port = _canonical(parsed[0]), parsed[1]
        for known, known_port in (*self.entries, *also):
            if known == name and (known_port is None or port is None or known_port == port):
                return True
        return False


class OpsGate:
    """Checks the Host and the bearer token of an operations API request; one per gateway app."""

    def __init__(
        self, gateway: str, operator_keys: Mapping[str, keys.PublicKey], names: HostNames,
        snapshot_getter: Callable[[], Snapshot | None],
    ) -> None:  # fmt: skip
        self.gateway = gateway
        self.audience = ops_audience(gateway)
        self.operator_keys = dict(operator_keys)
        self.names = names
        self.snapshot_getter = snapshot_getter
        self._base: tuple[int, tuple[tuple[str, int | None], ...]] = (-1, ())

    def _base_url_names(self) -> tuple[tuple[str, int | None], ...]:
        """The host of the base URL the registry lists for this gateway, parsed once per snapshot version."""
        snap = self.snapshot_getter()
        if snap is None:
            return ()
        if self._base[0] != snap.version:
            entry = snap.gateways.get(self.gateway) or {}
            found: tuple[tuple[str, int | None], ...] = ()
            try:
                url = urlsplit(str(entry.get("base_url") or ""))
                if url.hostname:
                    found = ((_canonical(url.hostname.lower()), url.port),)
            except ValueError:
                pass
            self._base = (snap.version, found)
        return self._base[1]

    def check_host(self, headers: Iterable[tuple[bytes, bytes]]) -> None:
        """Raise a Problem naming Host unless exactly one Host names this gateway."""
        hosts = [v.decode("latin-1") for k, v in headers if k.lower() == b"host"]
        if len(hosts) != 1:
            raise Problem(400, "invalid-parameter", "exactly one Host header is required", field="Host")
        if not self.names.allows(hosts[0], self._base_url_names()):
            raise Problem(421, "misdirected-request",
                          f"Host {hosts[0][:100]!r} is not a name of gateway {self.gateway}; the operations API "
                          "answers only to its own names (see --ops-host)", field="Host")  # fmt: skip

    def principal(self, headers: Iterable[tuple[bytes, bytes]]) -> Principal:
        """The verified principal of the request's bearer token, or a 401 Problem."""
        values = [v.decode("latin-1") for k, v in headers if k.lower() == b"authorization"]
        if len(values) != 1:
            raise _refused("an Authorization: Bearer token is required (lienthong ops login)")
        scheme, _, token = values[0].strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise _refused("an Authorization: Bearer token is required (lienthong ops login)")
        return self.verify(token)

    def verify(self, token: str) -> Principal:
        try:
            kid = tokens.unverified_kid(token)
        except tokens.TokenError as exc:
            raise _refused(exc.reason) from None
        if kid in self.operator_keys:
            try:
                claims = tokens.verify(token, self.operator_keys.get, audience=self.audience,
                                       max_lifetime=OPERATOR_MAX_LIFETIME,
                                       required=("exp", "iat", "aud", "iss", "sub"))  # fmt: skip
            except tokens.TokenError as exc:
                raise _refused(exc.reason) from None
            if claims.get("aud") != self.audience:
                raise _refused("token audience does not name this service")
            return Principal("operator", str(claims["sub"]))
        snap = self.snapshot_getter()
        if snap is None:
            raise Problem(503, "snapshot-expired", "this gateway holds no snapshot yet, so it knows no member keys",
                          headers={"Retry-After": "5"})  # fmt: skip
        claims = verify_client_token(token, snap.client_keys, self.audience)
        if claims.get("aud") != self.audience:  # one audience: a token for several gateways is refused
            raise _refused("token audience does not name this service")
        member = member_of(claims["sub"])
        if member is None:
            raise _refused("the token's subject is not a subsystem")
        return Principal("member", str(claims["sub"]), member)
