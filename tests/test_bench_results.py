"""The results writer: every required key is present, ratios are computed, unmeasured cases are null with a reason."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import wrk
from bench.loadgen import LoadResult
from bench.results import Results, scale_rows

REQUIRED = [
    "nginx_proxy_rps", "gateway_bare_rps", "gateway_full_1hop_rps", "gateway_full_2hop_rps", "connector_direct_rps",
    "connector_2hop_rps", "full_vs_nginx", "full_vs_bare", "twohop_vs_onehop", "connector_2hop_vs_direct",
    "machine", "timestamp", "not_measured",
    # issue 14: the TLS cases beside the plaintext ones
    "nginx_upstream_tls_rps", "nginx_tls_rps", "full_tls_rps", "full_tls_2hop_rps", "full_tls_vs_nginx_tls",
    "full_tls_vs_nginx_tls_min", "full_tls_vs_nginx_tls_max", "tls_hop_added_p50_ms", "tls_2hop_added_p50_ms",
]  # fmt: skip
CASES = ["nginx_proxy", "gateway_bare", "gateway_full_1hop", "gateway_full_2hop", "connector_direct", "connector_2hop"]

# Captured from `wrk -t1 -c32 -d2s --latency -s done.lua` against the nginx upstream (bench/wrk.py's hook).
WRK_SAMPLE = """Running 2s test @ http://127.0.0.1:40111/record
  1 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   280.64us  520.02us  11.56ms   96.52%
    Req/Sec   176.52k    12.12k  189.50k    85.00%
  Latency Distribution
     50%  169.00us
     75%  199.00us
     90%  251.00us
     99%    3.01ms
  351290 requests in 2.00s, 85.76MB read
Requests/sec: 175645.10
Transfer/sec:     42.88MB
WRKJSON {"requests":351290,"duration_us":2000012,"connect":0,"read":0,"write":0,"status":12,"timeout":1,\
"p50_us":169,"p99_us":3006,"p999_us":6095,"mean_us":280.6}
""".replace("\\\n", "")


def _load(rps: float, p50: float) -> LoadResult:
    return LoadResult(requests=int(rps * 2), errors=0, non2xx=0, duration_s=2.0, rps=rps, p50_ms=p50,
                      p99_ms=p50 * 3, p999_ms=p50 * 5, mean_ms=p50)


def test_writer_produces_every_required_key(tmp_path: Path) -> None:
    results = Results({"cores": 2, "cpu_model": "test cpu"}, quick=True)
    results.add_load("nginx_upstream", _load(50_000, 0.2), 0.5)
    results.add_low("nginx_upstream", _load(200, 0.3), 200)
    results.add_load("nginx_proxy", _load(20_000, 0.5), 1.0)
    results.add_low("nginx_proxy", _load(200, 0.4), 200)
    results.add_load("gateway_bare", _load(10_000, 1.0), 2.0)
    results.add_low("gateway_bare", _load(200, 0.9), 200)
    results.add_load("gateway_full_1hop", _load(8_000, 1.5), 2.0)
    results.add_low("gateway_full_1hop", _load(50, 1.6), 50)  # a slow case is loaded at a quarter of its rate
    results.skip("gateway_full_2hop", "the national gateway did not start")
    results.skip("connector_direct", "connectors/population does not exist yet")
    results.skip("connector_2hop", "connectors/population does not exist yet")
    results.add_scale("snapshot", {"build_s": 0.4, "nested": {"deliver_s": 0.1}, "ignored": [1, 2]})
    data = results.write(tmp_path)

    on_disk = json.loads((tmp_path / "latest.json").read_text())
    assert on_disk == data
    for key in REQUIRED:
        assert key in data, key
    for case in CASES:
        for suffix in ("_rps", "_p50_ms", "_p99_ms", "_p999_ms", "_cpu_s_per_1k", "_low_p50_ms"):
            assert f"{case}{suffix}" in data
    assert data["full_vs_nginx"] == 0.4
    assert data["full_vs_bare"] == 0.8
    assert data["twohop_vs_onehop"] is None and data["connector_2hop_vs_direct"] is None
    assert data["gateway_full_2hop_rps"] is None
    assert data["not_measured"]["gateway_full_2hop"] == "the national gateway did not start"
    # 2.0 CPU seconds over 20,000 requests is 0.1 s per 1,000.
    assert data["gateway_bare_cpu_s_per_1k"] == 0.1
    assert data["gateway_bare_added_p50_ms"] == 0.6
    assert data["gateway_full_1hop_low_rate_rps"] == 50 and data["low_rate_rps"] == 200
    assert "gateway_full_1hop 50/s" in (tmp_path / "latest.md").read_text()
    assert data["snapshot_build_s"] == 0.4 and data["snapshot_nested_deliver_s"] == 0.1
    assert "snapshot_ignored" not in data
    assert data["machine"] == {"cores": 2, "cpu_model": "test cpu"}
    assert data["timestamp"].endswith("Z")


def test_ratios_are_taken_within_each_round_then_the_median(tmp_path: Path) -> None:
    # A slow spell that halves everything in round 2 must not move the ratio; the case figures are medians.
    results = Results({"cores": 2, "cpu_model": "test cpu"}, quick=False, rounds=3)
    for round_no, (proxy, full) in enumerate(((20_000, 7_000), (10_000, 3_000), (21_000, 6_300))):
        results.add_load("nginx_proxy", _load(proxy, 0.5), 1.0, round_no)
        results.add_load("gateway_full_1hop", _load(full, 1.5), 1.0, round_no)
    results.add_load("gateway_bare", _load(9_000, 1.0), 1.0, 0)
    results.add_load("gateway_bare", _load(8_000, 1.0), 1.0, 2)  # round 1 failed for bare: no pair in round 1
    results.add_load("connector_direct", _load(600, 10.0), 1.0, 0)
    results.drop("connector_direct", "round 2: 40 of 1200 requests failed")
    data = results.write(tmp_path)

    assert data["rounds"] == 3
    assert data["nginx_proxy_rps"] == 20_000 and data["gateway_full_1hop_rps"] == 6_300
    assert (data["nginx_proxy_rps_min"], data["nginx_proxy_rps_max"]) == (10_000, 21_000)
    assert data["gateway_full_1hop_requests"] == 2 * (7_000 + 3_000 + 6_300)
    # per round 0.35, 0.3, 0.3: the median of those, not the medians' quotient 6,300 / 20,000 = 0.315
    assert (data["full_vs_nginx"], data["full_vs_nginx_min"], data["full_vs_nginx_max"]) == (0.3, 0.3, 0.35)
    # only rounds 0 and 2 hold both cases: 7000/9000 and 6300/8000
    assert data["full_vs_bare_min"] == 0.778 and data["full_vs_bare_max"] == 0.787
    assert data["full_vs_bare"] == round((7_000 / 9_000 + 6_300 / 8_000) / 2, 3)
    assert data["connector_direct_rps"] is None
    assert data["not_measured"]["connector_direct"] == "round 2: 40 of 1200 requests failed"
    md = (tmp_path / "latest.md").read_text()
    assert "median of 3 interleaved rounds" in md
    assert "| full_vs_nginx | 0.300 | 0.300-0.350 | >= 0.3 | meets |" in md


def test_the_hop_latency_target_is_per_hop(tmp_path: Path) -> None:
    # 1.5 ms over the two gateways in front of the connector meets 1 ms a hop; 1.5 ms for one hop does not
    results = Results({"cores": 2, "cpu_model": "test cpu"}, quick=False)
    for case, p50 in (("gateway_full_1hop", 1.0), ("gateway_full_2hop", 2.5), ("connector_direct", 2.0),
                      ("connector_2hop", 3.5)):  # fmt: skip
        results.add_low(case, _load(100, p50), 100)
    data = results.write(tmp_path)
    assert data["second_hop_added_p50_ms"] == data["connector_2hop_added_p50_ms"] == 1.5
    md = (tmp_path / "latest.md").read_text()
    assert "| second_hop_added_p50_ms | 1.500 |  | <= 1.0 ms | misses |" in md
    assert "| connector_2hop_added_p50_ms | 1.500 |  | <= 2.0 ms (2 hops) | meets |" in md


def test_tls_ratios_sit_beside_the_plaintext_ones_in_the_same_rounds(tmp_path: Path) -> None:
    # Both comparisons from the same rounds: the plaintext figures do not move when the TLS cases are added.
    results = Results({"cores": 2, "cpu_model": "test cpu"}, quick=False, rounds=3)
    per_round = ((20_000, 6_000, 10_000, 4_000), (10_000, 3_500, 5_000, 1_000), (20_000, 5_000, 8_000, 2_000))
    for round_no, (proxy, full, proxy_tls, full_tls) in enumerate(per_round):
        results.add_load("nginx_proxy", _load(proxy, 0.5), 1.0, round_no)
        results.add_load("gateway_full_1hop", _load(full, 1.5), 1.0, round_no)
        results.add_load("nginx_tls", _load(proxy_tls, 0.7), 1.0, round_no)
        results.add_load("full_tls", _load(full_tls, 2.0), 1.0, round_no)
    results.add_load("full_tls_2hop", _load(900, 5.0), 1.0, 0)
    for case, p50 in (("nginx_upstream_tls", 0.4), ("nginx_tls", 0.6), ("full_tls", 1.2), ("full_tls_2hop", 2.9),
                      ("nginx_upstream", 0.3), ("gateway_full_1hop", 1.0)):  # fmt: skip
        results.add_low(case, _load(100, p50), 100)
    data = results.write(tmp_path)

    # per round 0.4, 0.2, 0.25: the median of those, not 4,000 / 8,000 = 0.5 of the medians
    assert (data["full_tls_vs_nginx_tls"], data["full_tls_vs_nginx_tls_min"], data["full_tls_vs_nginx_tls_max"]) == (
        0.25, 0.2, 0.4)  # fmt: skip
    assert (data["full_vs_nginx"], data["full_vs_nginx_min"], data["full_vs_nginx_max"]) == (0.3, 0.25, 0.35)
    assert data["full_tls_vs_full"] == 0.4 and data["nginx_tls_vs_nginx"] == 0.5
    assert data["tls_twohop_vs_onehop"] == 0.225  # only round 0 holds both
    # at low load, from the direct HTTPS call to the upstream: one gateway hop, both hops, and the mesh hop alone
    assert data["tls_hop_added_p50_ms"] == 0.8 and data["tls_2hop_added_p50_ms"] == 2.5
    assert data["tls_second_hop_added_p50_ms"] == 1.7 and data["nginx_tls_added_p50_ms"] == 0.2
    assert data["gateway_full_added_p50_ms"] == 0.7
    md = (tmp_path / "latest.md").read_text()
    assert "| full_tls_vs_nginx_tls | 0.250 | 0.200-0.400 | >= 0.3 | misses |" in md
    assert "| tls_hop_added_p50_ms | 0.800 |  | <= 1.0 ms | meets |" in md
    assert "| tls_2hop_added_p50_ms | 2.500 |  | <= 2.0 ms (2 hops) | misses |" in md
    assert "| 9. gateway, full chain, 1 hop, TLS on both legs | 2,000 |" in md  # the median round
    assert "tls_hop_added_p50_ms" not in {row[0] for row in scale_rows(data)}  # a known key, not a scale figure


def test_markdown_table_shows_figures_and_reasons(tmp_path: Path) -> None:
    results = Results({"cores": 2, "cpu_model": "test cpu"}, quick=False)
    results.add_load("nginx_proxy", _load(20_000, 0.5), None)
    results.skip("gateway_bare", "`lienthong gateway serve` does not exist yet")
    results.write(tmp_path)
    md = (tmp_path / "latest.md").read_text()
    assert "| 2. nginx reverse proxy | 20,000 | 0.50 | 1.50 | 2.50 |" in md
    assert "| 3. gateway, policies off | not measured |" in md
    assert "- gateway_bare: `lienthong gateway serve` does not exist yet" in md
    assert "full run" in md


def test_the_low_rate_stays_under_a_quarter_of_the_case_throughput() -> None:
    from bench.measure import low_rate_for

    assert low_rate_for(200, 40_000) == 200
    assert low_rate_for(200, 213) == 53
    assert low_rate_for(200, 12) == 10
    assert low_rate_for(200, None) == 200


def test_wrk_output_is_parsed_from_the_hook_line() -> None:
    result = wrk.parse(WRK_SAMPLE)
    assert result.requests == 351290
    assert result.rps == pytest.approx(351290 / 2.000012, rel=1e-4)
    assert result.p50_ms == 0.169 and result.p99_ms == 3.006 and result.p999_ms == 6.095
    assert result.non2xx == 12 and result.errors == 1
    assert result.generator == "wrk"


def test_wrk_output_without_the_hook_line_is_refused() -> None:
    try:
        wrk.parse(WRK_SAMPLE.split("WRKJSON")[0])
    except ValueError as exc:
        assert "WRKJSON" in str(exc)
    else:
        raise AssertionError("parse accepted output without the hook line")


def test_profile_top_entries_count_own_and_total_samples() -> None:
    from bench.profile import top_entries

    collapsed = (
        'process 1:"gw";serve (gateway/cli.py:114);GatewayApp._r1 (gateway/app.py:194);sign (jwt/x.py:1) 6\n'
        'process 1:"gw";serve (gateway/cli.py:114);GatewayApp._r1 (gateway/app.py:194) 2\n'
        'process 1:"gw" 5\n'
    )
    text = top_entries(collapsed)
    assert "samples with Python frames: 8; without (native code, released GIL): 5" in text
    own, total = text.split("by total time")
    assert "75.0%  sign (jwt/x.py:1)" in own and "25.0%  GatewayApp._r1" in own
    assert "100.0%  GatewayApp._r1 (gateway/app.py:194)" in total
    assert "gateway/cli.py" not in total


def test_a_full_run_only_scale_case_is_not_measured_in_the_quick_run(tmp_path: Path) -> None:
    from bench import scale

    with pytest.raises(RuntimeError, match="full run only"):
        scale.run_one("instructions", quick=True, workdir=tmp_path)


def test_instruction_counts_are_read_from_valgrind_output() -> None:
    from bench.instructions import COLLECTED

    found = COLLECTED.search("==6411== Events    : Ir\n==6411== Collected : 2774579984\n==6411==\n")
    assert found is not None and int(found.group(1)) == 2774579984


def test_the_tls_group_selects_the_tls_cases_and_only_them() -> None:
    from bench.run import selected

    assert selected("tls") == {"nginx_upstream_tls", "nginx_tls", "full_tls", "full_tls_2hop"}
    assert selected("full_tls,nginx_proxy") == {"full_tls", "nginx_proxy"}
    assert {"nginx_tls", "full_tls_2hop", "gateway_full_1hop", "nginx_proxy"} <= selected(None)
