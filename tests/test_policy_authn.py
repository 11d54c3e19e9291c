"""authn and authz in isolation: the attack cases of protocol §4 and the deny-by-default rules of §6/§8."""

from __future__ import annotations

import base64
import time

import orjson
import pytest
from cryptography.hazmat.primitives import serialization

from lienthong.keys import generate
from lienthong.problem import Problem
from lienthong.tokens import sign
from policies.authn import Authn
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


def test_valid_client_token_fills_the_context(world: World) -> None:
    ctx = context(world.snapshot(), headers={**client_headers(world.client_token()), "x-road-userid": "officer-7"})
    Authn("national").access(ctx)
    assert (ctx.client, ctx.purpose, ctx.user_id, ctx.consumer_gateway) == (
        CONSUMER, "birth-registration", "officer-7", "national"
    )  # fmt: skip


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@pytest.mark.parametrize(
    "case",
    ["alg-none", "hs256-public-key", "wrong-aud", "expired", "nbf-future", "unknown-kid", "revoked-kid",
     "oversize", "bad-signature", "too-long-lifetime", "no-token"],
)  # fmt: skip
def test_client_token_attacks_are_401(world: World, case: str) -> None:
    snap = world.snapshot()
    now = int(time.time())
    claims = {"iss": CONSUMER, "sub": CONSUMER, "aud": "national", "iat": now, "exp": now + 60}
    if case == "alg-none":
        none_header = _b64(orjson.dumps({"alg": "none", "kid": "client-1"}))
        token = f"{none_header}.{_b64(orjson.dumps(claims))}."
    elif case == "hs256-public-key":
        pub = world.client_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        token = _hs256(claims, pub)
    elif case == "wrong-aud":
        token = world.client_token(aud="hanoi")
    elif case == "expired":
        token = sign(world.client_key, "client-1", {**claims, "iat": now - 200, "exp": now - 100, "nbf": now - 200})
    elif case == "nbf-future":
        token = sign(world.client_key, "client-1", {**claims, "nbf": now + 120, "exp": now + 200})
    elif case == "unknown-kid":
        token = world.client_token(kid="nobody")
    elif case == "revoked-kid":
        token = world.client_token(kid="client-old", key=world.revoked_key)
    elif case == "oversize":
        token = world.client_token(pad="x" * 9000)
    elif case == "bad-signature":
        token = world.client_token(key=generate())
    elif case == "too-long-lifetime":
        token = world.client_token(lifetime=3600)
    else:
        token = ""
    headers = client_headers(token) if token else {"x-road-client": CONSUMER}
    refused(Authn("national"), context(snap, headers=headers), 401, "invalid-token")


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
    ctx = context(world.snapshot(), headers=client_headers(world.client_token(), client=OTHER_CONSUMER))
    assert refused(Authn("national"), ctx, 401, "invalid-token").field == "X-Road-Client"


def test_token_for_another_subsystems_key_is_401(world: World) -> None:
    token = sign(world.other_client_key, "other-1", {"iss": CONSUMER, "sub": CONSUMER, "aud": "national"})
    refused(Authn("national"), context(world.snapshot(), headers=client_headers(token)), 401, "invalid-token")


def test_cache_verifies_once_but_honours_a_key_revoked_in_a_newer_snapshot(world: World) -> None:
    authn = Authn("national")
    token = world.client_token(kid="client-2")
    authn.access(context(world.snapshot(), headers=client_headers(token)))
    assert token in authn._verified
    authn.access(context(world.snapshot(), headers=client_headers(token)))  # served from the cache
    refused(authn, context(world.snapshot(revoke_client_key=True), headers=client_headers(token)), 401, "invalid-token")


def test_cached_token_still_checks_x_road_client(world: World) -> None:
    authn = Authn("national")
    token = world.client_token()
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
        {"purpose": ""},
    ],
)
def test_authz_denies_by_default(world: World, kw: dict[str, object]) -> None:
    with pytest.raises(Problem) as info:
        authorized(world, **kw)  # type: ignore[arg-type]
    assert (info.value.status, info.value.code) == (403, "access-denied")
