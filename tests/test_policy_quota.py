"""quota against a real Redis: 429 with Retry-After, one limit shared by two chains, and the outage rule."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis

from lienthong.problem import Problem
from lienthong.redis_connection import EmbeddedRedis
from policies.chain import ChainConfig, build_chain
from policies.quota import Quota
from tests.test_policy_fixtures import World, client_headers, context


@pytest.fixture(autouse=True)
def away_from_a_minute_edge() -> None:
    """Minute windows turn on the clock; start each test with a few seconds of the window left."""
    left = 60 - time.time() % 60
    if left < 5:
        time.sleep(left + 0.1)


def admitted(policy: Quota, world: World, n: int) -> tuple[int, list[Problem]]:
    ok, refusals = 0, []
    snap = world.snapshot()
    grant = snap.grants[("VN/PROV/NGHEAN/civil-status", "VN/GOV/BCA/population/persons")][0]
    for _ in range(n):
        ctx = context(snap, role="home")
        ctx.grant = grant
        try:
            policy.access(ctx)
            ok += 1
        except Problem as problem:
            refusals.append(problem)
    return ok, refusals


def test_over_the_minute_limit_is_429_with_retry_after(redis_url: str) -> None:
    world = World(quota={"per_minute": 25, "per_day": 1000})
    ok, refusals = admitted(Quota(redis_url), world, 40)
    assert ok == 25
    assert refusals and all(p.status == 429 and p.code == "quota-exceeded" for p in refusals)
    retry = int(refusals[0].headers["Retry-After"])
    assert 1 <= retry <= 60


def test_day_limit_gives_retry_after_until_midnight(redis_url: str) -> None:
    world = World(quota={"per_minute": 1000, "per_day": 7})
    ok, refusals = admitted(Quota(redis_url), world, 10)
    assert ok == 7 and len(refusals) == 3
    assert int(refusals[0].headers["Retry-After"]) <= 86400


def test_two_chains_share_one_limit_through_redis(redis_url: str, tmp_path: Path) -> None:
    """Two workers (two chains, as two replicas would hold) never admit more than the limit together."""
    world = World(quota={"per_minute": 60, "per_day": 10000})
    cfg = ChainConfig("nghean", tmp_path, redis_url, frozenset({"authn", "authz", "quota"}), b"k")  # the home
    chains = [build_chain(cfg), build_chain(cfg)]
    snap = world.snapshot()
    token = world.client_token(aud="nghean")
    admitted_total = 0
    for i in range(200):
        ctx = context(snap, role="home", headers=client_headers(token))
        try:
            chains[i % 2].access(ctx)
            admitted_total += 1
        except Problem as problem:
            assert problem.status == 429 and ctx.status == 429 and ctx.error_code == "quota-exceeded"
    assert admitted_total == 60
    keys = redis.Redis.from_url(redis_url).keys("quota:*:m:*")
    assert len(keys) == 1


def test_leases_keep_redis_off_the_hot_path(redis_url: str) -> None:
    """A steady client costs far fewer Redis calls than requests: tokens are leased in blocks."""
    world = World(quota={"per_minute": 100000, "per_day": 1000000})
    policy = Quota(redis_url)
    ok, _ = admitted(policy, world, 2000)
    assert ok == 2000
    assert policy.leases <= 30, f"{policy.leases} Redis round trips for 2000 calls"
    used = redis.Redis.from_url(redis_url).mget(redis.Redis.from_url(redis_url).keys("quota:*:m:*"))
    assert 2000 <= int(used[0] or 0) <= 2000 + 100  # at most one unspent lease is held


def test_redis_down_admits_the_bounded_allowance_then_refuses(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path / "r", durable=False)
    url = server.start()
    try:
        world = World(quota={"per_minute": 50, "per_day": 1000})
        policy = Quota(url)
        ok, _ = admitted(policy, world, 1)  # holds a lease of 1
        assert ok == 1
        server.kill()
        ok, refusals = admitted(policy, world, 20)
        assert ok == 5  # max(1, 50 // 10): the documented outage allowance
        assert refusals[0].status == 429
        server = EmbeddedRedis(tmp_path / "r", port=server.port, durable=False)
        server.start()
        policy._redis_down_until = 0.0
        admitted(policy, world, 1)
        used = redis.Redis.from_url(url).mget(redis.Redis.from_url(url).keys("quota:*:m:*"))
        assert int(used[0] or 0) >= 5 + 1  # the calls admitted during the outage were charged afterwards
    finally:
        server.stop()


@pytest.mark.parametrize("role", ["provider"])
def test_provider_side_does_not_count(redis_url: str, role: str) -> None:
    world = World(quota={"per_minute": 1, "per_day": 1})
    policy = Quota(redis_url)
    snap = world.snapshot()
    grant = snap.grants[("VN/PROV/NGHEAN/civil-status", "VN/GOV/BCA/population/persons")][0]
    for _ in range(5):
        ctx = context(snap, role=role)  # type: ignore[arg-type]
        ctx.grant = grant
        policy.access(ctx)
    assert redis.Redis.from_url(redis_url).keys("quota:*") == []
