"""The short form of `make chaos` (bench/chaos.py) in the test suite: the same fault code on the shared live mesh,
with outages of seconds. After each fault the meter's 2xx counts equal the client's successes per service and
consumer, every answered call has one audit record per gateway it touched, the audit chains verify, no call
outlived its timeout, restarted processes became healthy and every target answered 2xx again. How fast they did is
`make chaos`'s table (bench/chaos.py, against its 5 s target); a test bounds it only to catch a hang, since a busy
machine may take longer and still lose nothing."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from bench.chaos import (
    Durations,
    Row,
    kill_and_restart,
    redis_down,
    registry_down,
    registry_restart,
    run_fault,
    slow_then_hang,
)  # fmt: skip
from bench.chaos_mesh import ChaosMesh, shared

HANG_BOUND = 60.0  # seconds: only a restart that never comes back fails the test
TEST = Durations(lead=0.8, down=0.5, registry_down=3, redis_down=3, latency=1, hang=2, tail=0.5, settle=15)


@pytest.fixture(scope="module")
def cm(tmp_path_factory: pytest.TempPathFactory) -> ChaosMesh:
    return shared(tmp_path_factory.mktemp("chaos-mesh"))


FAULTS: dict[str, Callable[[ChaosMesh], Callable[[Row], float]]] = {
    "kill -9 gateway national": lambda cm: kill_and_restart(cm, "gw-national", TEST.down),
    "kill -9 connector population": lambda cm: kill_and_restart(cm, "population", TEST.down),
    "registry down": lambda cm: registry_down(cm, TEST.registry_down),
    "redis down": lambda cm: redis_down(cm, TEST.redis_down),
    "upstream slowed then hung": lambda cm: slow_then_hang(cm, TEST.latency, TEST.hang),
    "registry restart under load": registry_restart,
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_fault_loses_nothing_and_recovers(cm: ChaosMesh, fault: str) -> None:
    row = run_fault(cm, fault, FAULTS[fault](cm), TEST, say=lambda line: None)
    assert row.sent > 0 and row.succeeded > 0
    assert row.lost_records == 0, row.lost_detail
    assert row.audit_verified, row.lost_detail
    assert row.hung_calls == 0, f"a call took {row.max_call_seconds} s"
    if row.healthy_seconds is not None:
        assert row.healthy_seconds <= HANG_BOUND
    assert row.recover_seconds is not None, "some target never answered 2xx again"
    if fault in ("registry down", "redis down"):  # the mesh keeps serving through these outages
        assert row.served_during_fault > 0
        assert set(row.failed_cleanly) <= {"429 quota-exceeded"}, row.failed_cleanly
