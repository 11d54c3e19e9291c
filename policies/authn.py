"""authn (priority 100): who is calling. Client tokens at the home gateway (protocol §4.1), gateway assertions at
the hosting gateway (§4.2). Every failure is 401 `invalid-token` / `invalid-assertion`; the detail never echoes the
token. A client whose member is homed at another gateway is refused with 403 `access-denied`.

A client may instead authenticate by its TLS client certificate, X-Road's way (§9.x): a verified certificate naming
urn:lienthong:subsystem:S, and X-Road-Client: S (else 403 `certificate-identity-mismatch`); the home-gateway rule is
the same. Beside such a certificate, an Authorization holding one of the mesh's client tokens (its kid is a client key)
is verified and must name the same subsystem; any other Authorization is the end user's, passed on to the provider
unread (PR-REST §4.7: X-Road passes JWTs from the consumer to the provider unmodified).

The gateway runs this policy before it routes (Chain.identify), so a caller without valid credentials learns nothing
about the catalogue; the one check that needs the route (an assertion's `svc`) is `check_service`, run after it.
"""

from __future__ import annotations

import fcntl
import hashlib
import mmap
import struct
import tempfile
import time
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from lienthong import pki
from lienthong.keys import PublicKey
from lienthong.problem import Problem
from lienthong.tokens import TokenError, unverified_kid, verify
from policies.base import CallContext, PolicyBase
from policies.chain import ChainConfig

MAX_ASSERTION_LIFETIME = 30
# A real client token weighs about 400 bytes (EdDSA or ES256, protocol §4.1); 4 KiB leaves room for extra claims
# while keeping what one token can pin in the cache small. Larger ones are refused before any parsing.
MAX_CLIENT_TOKEN_BYTES = 4096
MAX_AUTHORIZATION = len("Bearer ") + MAX_CLIENT_TOKEN_BYTES
# The verified-token cache of one worker holds at most this much, counted as estimated bytes (see _entry_cost).
CACHE_BUDGET_BYTES = 16 * 1024 * 1024
# Per entry beyond the token's own bytes: the claims dict, its tuple and the cache's slot (measured: ~800 bytes for
# a 400-byte token, so 2 x token + 512 over-counts a little, never under-counts).
ENTRY_OVERHEAD = 512


def _invalid_token(detail: str, field: str = "Authorization") -> Problem:
    challenge = {"WWW-Authenticate": 'Bearer error="invalid_token"'}
    return Problem(401, "invalid-token", detail, field=field, headers=challenge)


def _invalid_assertion(detail: str) -> Problem:
    return Problem(401, "invalid-assertion", detail, field="X-Lienthong-Assertion")


def _certificate_mismatch(subsystem: str) -> Problem:
    detail = f"X-Road-Client is not the subsystem of the client certificate ({subsystem})"
    return Problem(403, "certificate-identity-mismatch", detail, field="X-Road-Client")


def _certificate_subsystem(ctx: CallContext) -> str | None:
    """The subsystem a verified client certificate names, if it names one."""
    peer = ctx.peer
    if peer is None or peer.identity is None:
        return None
    parsed = pki.parse_identity(peer.identity)
    return parsed[1] if parsed is not None and parsed[0] == "subsystem" else None


def _mesh_token(header: str, client_keys: Mapping[str, tuple[str, PublicKey]]) -> bool:
    """Whether an Authorization header holds one of this mesh's client tokens (its kid is a client key of the
    snapshot): such a token is verified and never passed on; anything else beside a certificate is the end user's."""
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token or len(header) > MAX_AUTHORIZATION:
        return False
    try:
        return unverified_kid(token.strip()) in client_keys
    except TokenError:
        return False


def _entry_cost(token: str) -> int:
    """Estimated bytes one cache entry holds: the token as key, its decoded claims (no larger than it) and overhead."""
    return 2 * len(token) + ENTRY_OVERHEAD


def _names_service(claims: dict[str, Any], service_id: str) -> None:
    if claims.get("svc") != service_id:
        raise _invalid_assertion("the assertion names another service")


def verify_client_token(token: str, keys: Mapping[str, tuple[str, PublicKey]], audience: str) -> dict[str, Any]:
    """A client token signed by one of the snapshot's client keys (kid -> (subsystem, key)) for `audience`, its iss
    and sub the subsystem that owns the key; a 401 Problem otherwise. Also verifies the operations API's member
    tokens (gateway/ops_auth.py), with the ops audience."""

    def key_for(kid: str) -> PublicKey | None:
        found = keys.get(kid)
        return found[1] if found else None

    try:
        claims = verify(token, key_for, audience=audience, required=("exp", "iat", "aud", "iss", "sub"))
    except TokenError as exc:
        raise _invalid_token(exc.reason) from None
    owner = keys[claims["_kid"]][0]
    if claims.get("sub") != owner or claims.get("iss") != owner:
        raise _invalid_token("the token's iss and sub must be the subsystem that owns its key")
    return claims


def check_service(ctx: CallContext, service_id: str) -> None:
    """After routing: a verified inbound assertion must name the service the call was routed to."""
    if ctx.assertion is not None:
        _names_service(ctx.assertion, service_id)


class Authn(PolicyBase):
    name = "authn"
    priority = 100

    def __init__(self, gateway: str) -> None:
        self.gateway = gateway
        # token -> (claims, exp, cost): one signature check per token for its whole life, not one per call. FIFO by
        # insertion: a client token lives at most 300 s, so the oldest entry is also the nearest to expiring.
        self._verified: OrderedDict[str, tuple[dict[str, Any], float, int]] = OrderedDict()
        self.cached_bytes = 0  # sum of the entries' costs, kept at most CACHE_BUDGET_BYTES
        # (issuing gateway, its nonce jti) -> exp: assertions already accepted, when no shared set was made
        self._seen_jti: dict[tuple[str, str], float] = {}
        self._seen_purge_at = 0.0

    def access(self, ctx: CallContext) -> None:
        if ctx.role == "provider":
            self._assertion(ctx)
        else:
            self._client_token(ctx)

    # -- client token (home / local) -------------------------------------------------------------------------------

    def _client_token(self, ctx: CallContext) -> None:
        header = ctx.headers.get("authorization", "")
        certified = _certificate_subsystem(ctx)
        if certified is not None and not _mesh_token(header, ctx.snapshot.client_keys):
            # X-Road's way: the certificate authenticates; an Authorization beside it is the end user's credential
            # for the provider, passed on unread (PR-REST §4.7)
            ctx.end_user_authorization = bool(header)
            self._client_certificate(ctx, certified)
            return
        if len(header) > MAX_AUTHORIZATION:  # before any parsing work
            raise _invalid_token(f"the client token is larger than {MAX_CLIENT_TOKEN_BYTES} bytes")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise _invalid_token("an Authorization: Bearer client token (or a subsystem client certificate over "
                                 "TLS) is required")  # fmt: skip
        token = token.strip()
        client = ctx.headers.get("x-road-client")
        if not client:
            raise _invalid_token("the X-Road-Client header is required", field="X-Road-Client")
        if certified is not None and certified != client:
            raise _certificate_mismatch(certified)
        now = time.time()
        cached = self._verified.get(token)
        if cached is not None:
            claims, exp, cost = cached
            owner = ctx.snapshot.client_keys.get(claims["_kid"])
            # a key revoked in a newer snapshot must stop a cached token at once
            if exp <= now or owner is None or owner[0] != claims["sub"]:
                del self._verified[token]
                self.cached_bytes -= cost
                cached = None
        if cached is None:
            claims = self._verify_client(token, ctx)
            self._remember(token, claims)
        if claims["sub"] != client:
            raise _invalid_token("X-Road-Client does not match the token's subject", field="X-Road-Client")
        self._accept_client(ctx, client)

    def _client_certificate(self, ctx: CallContext, subsystem: str) -> None:
        """X-Road's way: the verified TLS certificate is the credential, X-Road-Client must name its subsystem."""
        client = ctx.headers.get("x-road-client")
        if not client:
            raise _invalid_token("the X-Road-Client header is required", field="X-Road-Client")
        if client != subsystem:
            raise _certificate_mismatch(subsystem)
        self._accept_client(ctx, client)

    def _accept_client(self, ctx: CallContext, client: str) -> None:
        """An authenticated client, by token or certificate: only through its member's home gateway."""
        home = ctx.snapshot.home_gateway(client)
        if home != self.gateway:  # a client speaks only through its member's home gateway (§4.1), metaservices too
            member = client.rsplit("/", 1)[0]
            where = f"call through gateway {home}" if home else "the member has no home gateway in the snapshot"
            detail = f"gateway {self.gateway} is not the home gateway of member {member}: {where}"
            raise Problem(403, "access-denied", detail, field="X-Road-Client")
        ctx.client = client
        ctx.consumer_gateway = self.gateway
        ctx.purpose = ctx.headers.get("x-purpose") or None
        ctx.user_id = ctx.headers.get("x-road-userid") or None
        ctx.issue = ctx.headers.get("x-road-issue") or None

    def _verify_client(self, token: str, ctx: CallContext) -> dict[str, Any]:
        return verify_client_token(token, ctx.snapshot.client_keys, self.gateway)

    def _remember(self, token: str, claims: dict[str, Any]) -> None:
        cost = _entry_cost(token)
        self._verified[token] = (claims, float(claims["exp"]), cost)
        self.cached_bytes += cost
        while self.cached_bytes > CACHE_BUDGET_BYTES:
            _, (_, _, evicted) = self._verified.popitem(last=False)
            self.cached_bytes -= evicted

    # -- gateway assertion (provider) ------------------------------------------------------------------------------

    def _assertion(self, ctx: CallContext) -> None:
        token = ctx.headers.get("x-lienthong-assertion", "")
        if not token:
            raise _invalid_assertion("a gateway assertion is required")
        gateway_keys = ctx.snapshot.gateway_keys

        def key_for(kid: str) -> PublicKey | None:
            found = gateway_keys.get(kid)
            return found[1] if found else None

        try:
            claims = verify(
                token,
                key_for,
                audience=self.gateway,
                max_lifetime=MAX_ASSERTION_LIFETIME,
                required=("exp", "iat", "aud", "iss", "sub", "svc", "jti"),
            )
        except TokenError as exc:
            raise _invalid_assertion(exc.reason) from None
        signer = gateway_keys[claims["_kid"]][0]
        iss, sub = claims["iss"], claims["sub"]
        if iss != signer:
            raise _invalid_assertion("the assertion's iss is not the gateway that owns its key")
        if ctx.snapshot.home_gateway(sub) != iss:
            raise _invalid_assertion(f"gateway {iss} is not the home gateway of the consumer's member")
        if ctx.service_id is not None:  # the route is already known (the chain driven whole, as in tests)
            _names_service(claims, ctx.service_id)
        now = time.time()
        # jti is the issuing gateway's own nonce (§4.2), never the client's X-Road-Id (that travels as txn)
        self._check_replay(iss, str(claims["jti"]), float(claims["exp"]), now)
        ctx.assertion = claims
        ctx.client = sub
        ctx.consumer_gateway = iss
        ctx.purpose = claims.get("purpose")
        ctx.purpose_by_default = claims.get("purpose_default") is True
        ctx.user_id = claims.get("uid")
        ctx.issue = claims.get("issue")

    def _check_replay(self, iss: str, jti: str, exp: float, now: float) -> None:
        shared = _SHARED_REPLAY
        if shared is not None:  # the gateway's workers share one set (see SharedReplaySet)
            first = shared.first_use(iss, jti, exp, now)
            if first is None:
                raise Problem(503, "busy", "too many assertions in flight to check for replays: try again shortly")
            if not first:
                raise _invalid_assertion("assertion replayed (its jti was already accepted)")
            return
        # one process (an app built without the worker supervisor): its own set
        if now >= self._seen_purge_at:
            self._seen_jti = {k: e for k, e in self._seen_jti.items() if e + 5 > now}
            self._seen_purge_at = now + 5
        key = (iss, jti)
        if key in self._seen_jti:
            raise _invalid_assertion("assertion replayed (its jti was already accepted)")
        self._seen_jti[key] = exp


_SLOT = struct.Struct("<16sd")  # blake2b-128 of (iss, jti), its exp (0.0: never used)
# 24 MiB shared: an entry lives its assertion's <= 30 s + REPLAY_GRACE, so the table holds ~30,000 accepted assertions
# a second with room to spare (kept under half full, probe runs stay short)
REPLAY_SLOTS = 1 << 20
REPLAY_PROBE = 64
REPLAY_GRACE = 5.0  # seconds an entry outlives its exp (the clock skew an assertion's exp is read with)


class SharedReplaySet:
    """The assertions accepted by any worker of this gateway: a fixed table of slots in an anonymous shared mmap,
    made by the parent before it forks (`share_replay_cache`), so every worker sees the same memory. A check and its
    insert run under a POSIX record lock (lockf) on a temporary file: held per process and dropped by the kernel if
    the holder dies, so a crashed worker cannot wedge the others. Open addressing over at most REPLAY_PROBE slots;
    an expired slot is reused. A full probe run (REPLAY_PROBE unexpired assertions in a row: a table far over its
    sizing) refuses the call 503 `busy` rather than forget one: replay protection never degrades silently."""

    def __init__(self, slots: int = REPLAY_SLOTS) -> None:
        self.slots = slots
        self.mem = mmap.mmap(-1, slots * _SLOT.size)  # MAP_SHARED: a forked worker writes the parent's pages
        self.lockfile = tempfile.TemporaryFile(prefix="lienthong-replay-")

    def first_use(self, iss: str, jti: str, exp: float, now: float) -> bool | None:
        """Record (iss, jti) until exp: True; False if it is already recorded (a replay); None if no slot is free."""
        key = hashlib.blake2b(f"{iss}\0{jti}".encode(), digest_size=16).digest()
        start = int.from_bytes(key[:8], "little")
        mem, size, slots = self.mem, _SLOT.size, self.slots
        fd = self.lockfile.fileno()
        fcntl.lockf(fd, fcntl.LOCK_EX)
        try:
            free = -1
            for i in range(REPLAY_PROBE):
                at = ((start + i) % slots) * size
                seen, until = _SLOT.unpack_from(mem, at)
                if until == 0.0:  # never used: the key is not further on
                    if free < 0:
                        free = at
                    break
                live = until + REPLAY_GRACE > now
                if live and seen == key:
                    return False
                if not live and free < 0:
                    free = at
            if free < 0:
                return None
            _SLOT.pack_into(mem, free, key, exp)
            return True
        finally:
            fcntl.lockf(fd, fcntl.LOCK_UN)


_SHARED_REPLAY: SharedReplaySet | None = None


def share_replay_cache() -> None:
    """Called by the gateway's parent process before it forks its workers: from then on every Authn made in this
    process or its children checks replays in one set, whichever worker accepted the connection."""
    global _SHARED_REPLAY
    _SHARED_REPLAY = SharedReplaySet()


def build(cfg: ChainConfig) -> Authn:
    return Authn(cfg.gateway)
