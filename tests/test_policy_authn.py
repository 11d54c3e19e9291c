"""authn and authz in isolation: the attack cases of protocol §4 and the deny-by-default rules of §6/§8."""

from __future__ import annotations

import base64
import time
import tracemalloc

import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from hypothesis import given, settings
from hypothesis import strategies as st

from lienthong.keys import generate
from lienthong.problem import Problem
from lienthong.tokens import TokenError, sign, verify
from policies import authn as authn_module
from policies.authn import MAX_CLIENT_TOKEN_BYTES, Authn, check_service
from policies.authz import Authz
from tests.test_policy_fixtures import CONSUMER, OTHER_CONSUMER, SERVICE, World, client_headers, context


@pytest.fixture(scope="module")
def world() -> World:
    return World()


def refused(policy: Authn | Authz, ctx: object, status: int, code: str) -> Problem:
    with pytest.raises(Problem) as info:
        policy.access(ctx)  # type: ignore[arg-type]
    assert (info.value.status, info.value.code) == (status, code), info.value.detail
    return info.value


HOME = "nghean"  # CONSUMER's member is homed here: its client tokens are good at this gateway only


def home_token(world: World, **kw: object) -> str:
    return world.client_token(**{"aud": HOME, **kw})  # type: ignore[arg-type]


def test_valid_client_token_fills_the_context(world: World) -> None:
    ctx = context(world.snapshot(), headers={**client_headers(home_token(world)), "x-road-userid": "officer-7"})
    Authn(HOME).access(ctx)
    assert (ctx.client, ctx.purpose, ctx.user_id, ctx.consumer_gateway) == (
        CONSUMER, "birth-registration", "officer-7", HOME
    )  # fmt: skip


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@pytest.mark.parametrize(
    "case",
    ["alg-none", "hs256-public-key", "wrong-aud", "expired", "nbf-future", "unknown-kid", "revoked-kid",
     "oversize", "over-4-kib", "bad-signature", "too-long-lifetime", "no-token", "aud-list", "aud-list-of-one"],
)  # fmt: skip
def test_client_token_attacks_are_401(world: World, case: str) -> None:
    snap = world.snapshot()
    now = int(time.time())
    claims = {"iss": CONSUMER, "sub": CONSUMER, "aud": HOME, "iat": now, "exp": now + 60}
    if case == "alg-none":
        none_header = _b64(orjson.dumps({"alg": "none", "kid": "client-1"}))
        token = f"{none_header}.{_b64(orjson.dumps(claims))}."
    elif case == "hs256-public-key":
        pub = world.client_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        token = _hs256(claims, pub)
    elif case == "wrong-aud":
        token = home_token(world, aud="hanoi")
    elif case == "expired":
        token = sign(world.client_key, "client-1", {**claims, "iat": now - 200, "exp": now - 100, "nbf": now - 200})
    elif case == "nbf-future":
        token = sign(world.client_key, "client-1", {**claims, "nbf": now + 120, "exp": now + 200})
    elif case == "unknown-kid":
        token = home_token(world, kid="nobody")
    elif case == "revoked-kid":
        token = home_token(world, kid="client-old", key=world.revoked_key)
    elif case == "oversize":
        token = home_token(world, pad="x" * 9000)
    elif case == "over-4-kib":  # under the 8 KiB every JWT may weigh, over the 4 KiB of a client token
        token = home_token(world, pad="x" * 3200)
        assert 4096 < len(token) < 8192
    elif case == "bad-signature":
        token = home_token(world, key=generate())
    elif case == "too-long-lifetime":
        token = home_token(world, lifetime=3600)
    elif case == "aud-list":
        token = home_token(world, aud=[HOME, "national"])
    elif case == "aud-list-of-one":  # RFC 7519 allows it; the protocol takes the string form only (§4)
        token = home_token(world, aud=[HOME])
    else:
        token = ""
    headers = client_headers(token) if token else {"x-road-client": CONSUMER}
    problem = refused(Authn(HOME), context(snap, headers=headers), 401, "invalid-token")
    if case.startswith("aud-list"):
        assert "one audience" in problem.detail
    if token:
        assert problem.field == "Authorization"


def _hs256(claims: dict[str, object], secret: bytes) -> str:
    """An HMAC token keyed with the public key's bytes, built by hand: pyjwt itself refuses to sign it."""
    import hashlib
    import hmac
    import json

    header = _b64(json.dumps({"alg": "HS256", "kid": "client-1", "typ": "JWT"}).encode())
    payload = _b64(json.dumps(claims).encode())
    mac = hmac.new(secret, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{_b64(mac)}"


def test_forged_x_road_client_is_401(world: World) -> None:
    ctx = context(world.snapshot(), headers=client_headers(home_token(world), client=OTHER_CONSUMER))
    assert refused(Authn(HOME), ctx, 401, "invalid-token").field == "X-Road-Client"


def test_token_for_another_subsystems_key_is_401(world: World) -> None:
    token = sign(world.other_client_key, "other-1", {"iss": CONSUMER, "sub": CONSUMER, "aud": HOME})
    refused(Authn(HOME), context(world.snapshot(), headers=client_headers(token)), 401, "invalid-token")


@pytest.mark.parametrize("gateway", ["national", "hanoi"])
def test_a_client_token_is_good_only_at_its_members_home_gateway(world: World, gateway: str) -> None:
    """A well-signed token addressed to another gateway (aud = that gateway) is still refused there: 403."""
    ctx = context(world.snapshot(), headers=client_headers(home_token(world, aud=gateway)))
    problem = refused(Authn(gateway), ctx, 403, "access-denied")
    assert "home gateway" in problem.detail and HOME in problem.detail and problem.field == "X-Road-Client"
    assert ctx.client is None


def test_cache_verifies_once_but_honours_a_key_revoked_in_a_newer_snapshot(world: World) -> None:
    authn = Authn(HOME)
    token = home_token(world, kid="client-2")
    authn.access(context(world.snapshot(), headers=client_headers(token)))
    assert token in authn._verified
    authn.access(context(world.snapshot(), headers=client_headers(token)))  # served from the cache
    refused(authn, context(world.snapshot(revoke_client_key=True), headers=client_headers(token)), 401, "invalid-token")


def test_cached_token_still_checks_x_road_client(world: World) -> None:
    authn = Authn(HOME)
    token = home_token(world)
    authn.access(context(world.snapshot(), headers=client_headers(token)))
    forged = context(world.snapshot(), headers=client_headers(token, client=OTHER_CONSUMER))
    refused(authn, forged, 401, "invalid-token")


# -- gateway assertions (provider role) ---------------------------------------------------------------------------


def test_assertion_from_the_consumers_home_gateway_passes_once(world: World) -> None:
    authn = Authn("national")
    token = world.assertion()
    ctx = context(world.snapshot(), role="provider", headers={"x-lienthong-assertion": token})
    authn.access(ctx)
    assert (ctx.client, ctx.consumer_gateway, ctx.purpose) == (CONSUMER, "nghean", "birth-registration")
    replay = context(world.snapshot(), role="provider", headers={"x-lienthong-assertion": token})
    assert "replay" in refused(authn, replay, 401, "invalid-assertion").detail


@pytest.mark.parametrize(
    ("kwargs", "why"),
    [
        ({"signer": "hanoi"}, "home gateway"),  # Ha Noi speaking for a Nghe An subsystem
        ({"aud": "hanoi"}, "audience"),
        ({"lifetime": 120}, "lifetime"),
        ({"svc": "VN/GOV/BCA/population/other"}, "another service"),
    ],
)
def test_bad_assertions_are_401(world: World, kwargs: dict[str, object], why: str) -> None:
    ctx = context(world.snapshot(), role="provider", headers={"x-lienthong-assertion": world.assertion(**kwargs)})
    assert why in refused(Authn("national"), ctx, 401, "invalid-assertion").detail


def test_assertion_signed_with_another_gateways_key_is_401(world: World) -> None:
    token = sign(world.gateway_keys["hanoi"], "gw-nghean", {"iss": "nghean", "aud": "national", "sub": CONSUMER,
                                                             "svc": SERVICE}, lifetime=20)  # fmt: skip
    ctx = context(world.snapshot(), role="provider", headers={"x-lienthong-assertion": token})
    refused(Authn("national"), ctx, 401, "invalid-assertion")


# -- authz ----------------------------------------------------------------------------------------------------------


def authorized(world: World, *, snapshot_kw: dict[str, bool] | None = None, purpose: str = "birth-registration",
               method: str = "GET", path: str = "/persons/040203004567", client: str = CONSUMER) -> object:  # fmt: skip
    ctx = context(world.snapshot(**(snapshot_kw or {})), method=method, path=path)
    ctx.client, ctx.purpose = client, purpose
    Authz().access(ctx)
    return ctx


def test_authz_sets_the_grant(world: World) -> None:
    ctx = authorized(world)
    assert ctx.grant is not None and ctx.grant.id == "g-1"  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "kw",
    [
        {"purpose": "tax-audit"},  # purpose not in the grant
        {"method": "POST", "path": "/persons"},  # endpoint not in the grant
        {"client": OTHER_CONSUMER},  # no grant at all
        {"snapshot_kw": {"approved": False}},
        {"snapshot_kw": {"enabled": False}},
        {"purpose": "", "method": "POST", "path": "/persons"},  # no purpose, no grant to imply one (issue 15)
    ],
)
def test_authz_denies_by_default(world: World, kw: dict[str, object]) -> None:
    with pytest.raises(Problem) as info:
        authorized(world, **kw)  # type: ignore[arg-type]
    assert (info.value.status, info.value.code) == (403, "access-denied")


# -- the verified-token cache and the audience rule (issue 13) -----------------------------------------------------


def test_the_token_cache_is_bounded_by_bytes_not_count(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """2.6 MiB of distinct 3.9 KiB tokens (real ones weigh ~400 B) through one worker, against a budget cut to 2 MiB
    (the 16 MiB one would take 5,000 tokens under tracemalloc, 20 s): what the cache keeps, counted by tracemalloc
    and not by the cache's own estimate, stays under its byte budget; the newest token stays cached."""
    budget = 2 * 1024 * 1024
    monkeypatch.setattr(authn_module, "CACHE_BUDGET_BYTES", budget)  # read at each eviction, as a module global
    authn = Authn(HOME)
    snap = world.snapshot()
    token = ""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(700):
            token = home_token(world, pad=f"{i:05d}" + "x" * 2750)
            assert 3800 < len(token) <= MAX_CLIENT_TOKEN_BYTES
            authn.access(context(snap, headers=client_headers(token)))
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert held < budget, f"{held / 2**20:.1f} MiB held for a {budget / 2**20:.0f} MiB budget"
    assert sum(len(t) for t in authn._verified) < budget
    assert 0 < len(authn._verified) < 700 and token in authn._verified


AUDIENCES = st.one_of(
    st.lists(st.sampled_from([HOME, "national", "hanoi", "registry"]), min_size=1, max_size=3),
    st.dictionaries(st.text(max_size=3), st.text(max_size=3), min_size=1, max_size=2),
    st.integers(),
    st.booleans(),
    st.text(max_size=12),
)


@settings(max_examples=60, deadline=None)
@given(AUDIENCES)
def test_only_the_gateways_own_code_as_a_string_is_an_audience(aud: object) -> None:
    """Every aud a JSON token can carry: a list (of one or more), an object, a number, another string: refused."""
    key = generate()
    token = sign(key, "k", {"iss": CONSUMER, "sub": CONSUMER, "aud": aud})
    if aud == HOME:
        assert verify(token, lambda _kid: key.public_key(), audience=HOME)["aud"] == HOME
        return
    with pytest.raises(TokenError):
        verify(token, lambda _kid: key.public_key(), audience=HOME)


def test_an_assertion_with_a_list_audience_is_401(world: World) -> None:
    listed = world.assertion(aud=["national"])  # type: ignore[arg-type]
    ctx = context(world.snapshot(), role="provider", headers={"x-lienthong-assertion": listed})
    assert "one audience" in refused(Authn("national"), ctx, 401, "invalid-assertion").detail


def test_the_service_an_assertion_names_is_checked_after_routing(world: World) -> None:
    """authn runs before routing (service_id unknown); check_service then holds the assertion to the routed service."""
    ctx = context(world.snapshot(), role="provider", headers={"x-lienthong-assertion": world.assertion()})
    ctx.service_id = None
    Authn("national").access(ctx)
    check_service(ctx, SERVICE)
    with pytest.raises(Problem) as info:
        check_service(ctx, "VN/GOV/BCA/population/other")
    assert (info.value.status, info.value.code) == (401, "invalid-assertion")
