"""bench/revocation.py at a tiny size: a real registry process, gateways in two client processes, one revocation
through the API; what it reports must be what happened (the delta names the revoked grant alone, the client's
Snapshot lost it, the registry spent CPU on it)."""

from __future__ import annotations

from bench import revocation


def test_a_revocation_reaches_every_gateway_as_a_small_delta_at_a_tiny_scale() -> None:
    out = revocation.run(services=60, gateways=4, steps=1, processes=2)
    size = out["s60"]
    assert size["grants"] == 600 and size["clients"]["processes"] == 2
    assert size["cold_start"]["quarantined"] == 0 and size["cold_start"]["full_mb"] > 0.1
    assert 0 < size["change"]["change_cpu_ms"] and 0 < size["change"]["delta_cpu_ms"]
    round_ = size["g4"]
    assert round_["gateways"] == 4 and 0 < round_["delta_bytes"] < 2048  # one grant, not the snapshot
    assert round_["total_cpu_ms"] > 0 and round_["apply_ms"] > 0
    assert 0 < round_["received_p50_ms"] <= round_["delay_p50_ms"] <= round_["delay_p99_ms"] <= round_["delay_max_ms"]
    assert out["delta_bytes"] == round_["delta_bytes"] and set(out["meets"]) == {
        "change_delta_cpu_ms", "total_cpu_ms", "delta_bytes", "delay_p99_ms", "cold_start_s"
    }  # fmt: skip


def test_percentiles_are_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert revocation._pct(values, 99) == 99.0 and revocation._pct(values, 50) == 50.0
    assert revocation._pct([5.0, 1.0], 99) == 5.0
