"""The whole chain as a gateway drives it: priority order, a refusal that is still metered and audited, and a
served call minimized on the way out."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest
import redis

from lienthong.problem import Problem
from policies.audit_log import verify_dir
from policies.chain import ALL_POLICIES, ChainConfig, build_chain
from tests.test_policy_fixtures import CONSUMER, World, client_headers, context


def test_policies_run_in_priority_order() -> None:
    cfg = ChainConfig("national", Path("/nonexistent"), "redis://127.0.0.1:1/0", ALL_POLICIES, b"k")
    chain = build_chain(cfg)
    order = ["trace", "authn", "authz", "quota", "minimize", "meter", "txlog", "audit"]
    assert [p.name for p in chain.policies] == order
    assert [p.name for p in chain._reverse] == order[::-1]  # response and log run in reverse


def test_unknown_policy_name_is_a_configuration_error() -> None:
    with pytest.raises(ValueError, match="unknown policies"):
        build_chain(ChainConfig("national", Path("."), "redis://x", frozenset({"authn", "wasm"}), b"k"))


def test_refused_and_served_calls_are_both_metered_and_audited(redis_url: str, tmp_path: Path) -> None:
    world = World()
    snap = world.snapshot()
    cfg = ChainConfig("nghean", tmp_path, redis_url, ALL_POLICIES, b"k", 1.0)  # the consumer's home gateway

    async def scenario() -> None:
        chain = build_chain(cfg)
        await chain.start()
        refused = context(snap, headers=client_headers(world.client_token(aud="nghean"), purpose="marketing"))
        with pytest.raises(Problem) as info:
            chain.access(refused)
        assert info.value.status == 403 and refused.status == 403 and refused.error_code == "access-denied"
        chain.log(refused)
        served = context(snap, headers=client_headers(world.client_token(aud="nghean")))
        chain.access(served)
        assert served.traceparent is not None and served.grant is not None
        served.status = 200
        served.response_headers = [("content-type", "application/json")]
        served.response_body = orjson.dumps({"id": "040203004567", "full_name": "A", "religion": "x"})
        chain.response(served)
        assert orjson.loads(served.response_body) == {"id": "040203004567", "full_name": "A"}
        chain.log(served)
        await asyncio.sleep(0.2)  # one flush of the meter
        await chain.stop()

    asyncio.run(scenario())
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    counts = {f.rsplit("|", 1)[1]: int(v) for k in client.keys("meter:h:*") for f, v in client.hgetall(k).items()}
    assert counts == {"not-permitted": 1, "found": 1}  # the mesh said no: an answer, not an error
    records = [orjson.loads(line) for p in (tmp_path / "audit").glob("*.jsonl") for line in p.read_bytes().splitlines()]
    assert [(r["status"], r["error_code"], r["client"]) for r in records] == [
        (403, "access-denied", CONSUMER), (200, None, CONSUMER)
    ]  # fmt: skip
    assert verify_dir(tmp_path / "audit").ok
