"""gateway/metrics.py without a mesh: calls are counted by outcome class, service and consumer labels stay bounded
(top N by volume plus "other"), and the state gauges are set at every flush from a worker's own view. The live
scrape right after a gateway starts is in tests/test_dashboard.py, on its mesh."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from gateway import metrics
from policies.meter import UNIDENTIFIED


@dataclass
class Endpoint:
    no_data: frozenset[int] = frozenset()


@dataclass
class Call:  # the fields of policies.base.CallContext that metrics.count reads
    service_id: str | None
    client: str | None
    endpoint: Endpoint = field(default_factory=Endpoint)


def samples(name: str) -> list[tuple[dict[str, str], float]]:
    body, _ = metrics.render()
    return [(s.labels, s.value) for f in text_string_to_metric_families(body.decode()) for s in f.samples
            if s.name == name]  # fmt: skip


def counted(**labels: str) -> float:
    rows = samples("lienthong_gateway_requests_total")
    return sum(v for ls, v in rows if all(ls.get(k) == x for k, x in labels.items()))


def test_calls_are_counted_by_outcome_class() -> None:
    svc = "VN/TEST/outcome/svc"
    before = {o: counted(service=svc, outcome=o) for o in ("found", "no-data", "provider-failure", "not-permitted")}
    metrics.count("local", 200, "", 0.001, Call(svc, "VN/TEST/c/a", Endpoint(frozenset({404}))))
    metrics.count("local", 404, "", 0.001, Call(svc, "VN/TEST/c/a", Endpoint(frozenset({404}))))  # declared no data
    metrics.count("local", 504, "upstream-timeout", 5.0, Call(svc, "VN/TEST/c/a"))  # the provider's, not the mesh's
    metrics.count("local", 403, "access-denied", 0.001, Call(svc, "VN/TEST/c/a"))
    after = {o: counted(service=svc, outcome=o) for o in before}
    assert {o: after[o] - before[o] for o in before} == {"found": 1, "no-data": 1, "provider-failure": 1,
                                                           "not-permitted": 1}  # fmt: skip


def test_a_call_refused_before_its_client_was_known_is_unidentified() -> None:
    before = counted(consumer=UNIDENTIFIED, service="none")
    metrics.count("none", 401, "token-missing", 0.001, None)
    assert counted(consumer=UNIDENTIFIED, service="none") == before + 1


def test_labels_keep_the_top_n_by_volume_and_fold_the_rest_into_other() -> None:
    top = metrics.TopN(3)
    assert [top.label(n) for n in ("a", "b", "c", "d")] == ["a", "b", "c", "other"]
    for _ in range(10):
        top.label("d")
    top.rerank()  # d now has the most calls: it takes the place of the least called
    assert top.label("d") == "d" and len(top.admitted) == 3
    assert sum(top.label(n) == "other" for n in "abc") == 1


def test_many_consumers_make_at_most_n_plus_one_series() -> None:
    svc = "VN/TEST/bounded/svc"
    for i in range(3 * metrics.TOP_N):
        metrics.count("home", 200, "", 0.001, Call(svc, f"VN/TEST/many/c{i}"))
    consumers = {ls["consumer"] for ls, _ in samples("lienthong_gateway_requests_total") if ls["service"] == svc}
    assert "other" in consumers and len(consumers) <= metrics.TOP_N + 1


@dataclass
class Local:  # the part of gateway.ops_components.Local that set_state reads
    connectors_: list[dict[str, Any]]

    def snapshot_getter(self) -> Any:
        return None

    def confirmed_at(self) -> float:
        return 0.0

    def certificate_expires_at(self) -> float:
        return 4_000_000_000.0

    def spools(self) -> dict[str, int]:
        return {"meter": 123}

    def connectors(self) -> list[dict[str, Any]]:
        return self.connectors_


def test_state_gauges_are_set_at_every_flush() -> None:
    state = Local([{"service": "VN/TEST/gauge/up", "status": "unknown"}, {"service": "VN/TEST/gauge/down",
                                                                          "status": "down"}])  # fmt: skip
    def hook() -> None:
        metrics.set_state(state)

    metrics.watch_state(hook)
    try:
        up = {ls["service"]: v for ls, v in samples("lienthong_gateway_connector_up")}
        assert up["VN/TEST/gauge/up"] == 1 and up["VN/TEST/gauge/down"] == 0
        assert {ls["spool"]: v for ls, v in samples("lienthong_gateway_spool_backlog_bytes")}["meter"] == 123
        assert samples("lienthong_gateway_certificate_expiry_seconds")[0][1] > 2_000_000_000
        state.connectors_[1]["status"] = "up"  # the next flush (once a second, and before a scrape) sees it
        assert {ls["service"]: v for ls, v in samples("lienthong_gateway_connector_up")}["VN/TEST/gauge/down"] == 1
    finally:
        metrics._state_hooks.remove(hook)
