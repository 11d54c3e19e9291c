"""The mesh's upstream policy (lienthong.upstream_policy) as a class: every address of a refused range is refused
whatever its spelling, unless an allow entry covers it; a mesh endpoint needs an entry with its exact port; a
snapshot's policy never raises, whatever it holds; and the registry command refuses an allowlist it cannot read."""

from __future__ import annotations

import asyncio
import ipaddress
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lienthong.cli import main
from lienthong.upstream_policy import UpstreamPolicy, parse_allow

REFUSED_V4 = [ipaddress.ip_network(n) for n in ("127.0.0.0/8", "169.254.0.0/16", "0.0.0.0/32")]
REFUSED_V6 = [ipaddress.ip_network(n) for n in ("::1/128", "fe80::/10", "fd00:ec2::254/128")]


def refusal(policy: UpstreamPolicy, url: str) -> str | None:
    return asyncio.run(policy.check_url(url))


def _host(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    return f"[{address}]" if address.version == 6 else str(address)


@given(network=st.sampled_from(REFUSED_V4 + REFUSED_V6), offset=st.integers(min_value=0), port=st.integers(1, 65535))
def test_every_address_of_a_refused_range_is_refused_until_allowlisted(
    network: ipaddress.IPv4Network | ipaddress.IPv6Network, offset: int, port: int
) -> None:
    address = network.network_address + offset % network.num_addresses
    url = f"http://{_host(address)}:{port}/x"
    assert refusal(UpstreamPolicy(), url) is not None
    assert refusal(UpstreamPolicy(parse_allow(f"{_host(address)}:{port}")), url) is None
    assert refusal(UpstreamPolicy(parse_allow(str(network))), url) is None
    other_port = port % 65535 + 1
    assert refusal(UpstreamPolicy(parse_allow(f"{_host(address)}:{other_port}")), url) is not None


@given(last=st.integers(0, 255), port=st.integers(1, 65535))
def test_mapped_and_odd_spellings_of_loopback_are_loopback(last: int, port: int) -> None:
    for host in (f"[::ffff:127.0.0.{last}]", "localhost", "LocalHost.", "api.localhost"):
        assert refusal(UpstreamPolicy(), f"http://{host}:{port}") is not None, host


def test_metadata_names_and_addresses_and_the_mesh_itself() -> None:
    for url in ("http://metadata.google.internal/", "http://169.254.169.254", "http://[fd00:ec2::254]/",
                "http://100.100.100.200/latest"):  # fmt: skip
        assert refusal(UpstreamPolicy(), url) is not None, url
    mesh = UpstreamPolicy(parse_allow("127.0.0.1,10.0.0.0/8"), (("127.0.0.1", 8600), ("10.1.2.3", 6379)))
    assert refusal(mesh, "http://127.0.0.1:8801") is None  # loopback allowlisted for every port...
    assert refusal(mesh, "http://127.0.0.1:8600") is not None  # ...but not the registry's own port
    assert refusal(mesh, "http://10.1.2.3:6379") is not None  # nor Redis
    exact = UpstreamPolicy(parse_allow("127.0.0.1:8600"), (("127.0.0.1", 8600),))
    assert refusal(exact, "http://127.0.0.1:8600") is None  # an operator who names it exactly means it
    wildcard = UpstreamPolicy(parse_allow("127.0.0.1"), (("0.0.0.0", 8600),))  # a registry on every interface
    assert refusal(wildcard, "http://127.0.0.1:8600") is not None


JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


@settings(suppress_health_check=[HealthCheck.too_slow])  # nested JSON draws slowly on a loaded machine
@given(policy=JSONISH, gateways=JSONISH)
def test_a_snapshot_policy_never_raises(policy: Any, gateways: Any) -> None:
    UpstreamPolicy.from_snapshot({"upstream_policy": policy, "gateways": gateways})
    UpstreamPolicy.from_snapshot({"upstream_policy": {"allow": policy, "mesh": gateways}})


def test_snapshot_policy_counts_every_gateway_as_the_mesh() -> None:
    doc = {"upstream_policy": {"allow": ["127.0.0.1", "not an entry!"], "mesh": ["127.0.0.1:8600", "x"]},
           "gateways": [{"code": "national", "base_url": "http://127.0.0.1:8700"}, {"code": "bad"}]}  # fmt: skip
    policy = UpstreamPolicy.from_snapshot(doc)
    assert refusal(policy, "http://127.0.0.1:8801") is None
    assert refusal(policy, "http://127.0.0.1:8700") is not None and refusal(policy, "http://127.0.0.1:8600")


@pytest.mark.parametrize("allow", ["127.0.0.1:99999", "bad host!", "[::1", "10.0.0.0/33:1"])
def test_serve_refuses_an_unreadable_allowlist(allow: str) -> None:
    result = CliRunner().invoke(main, ["registry", "serve", "--upstream-allow", allow, "--data-dir", "/nonexistent"])
    assert result.exit_code == 2 and "upstream" in result.output, result.output


URLISH = st.one_of(
    st.text(max_size=40),
    st.builds(lambda host, rest: f"http://{host}{rest}", st.text(max_size=20), st.text(max_size=10)),
    st.sampled_from(["http://[::1/", "http://[::1]:99999/", "http://a:b/", "https://\x00/", "http://\ud800/",
                     "http://ÿ.example/", "http://a b/", "redis://[x"]),
)  # fmt: skip


@given(url=URLISH)
def test_any_text_as_an_upstream_url_is_checked_or_refused_as_a_policy_error(url: str) -> None:
    """The registry answers 400 for a PolicyError and 422 for a refusal; anything else raised would be its 500
    (schemathesis found `http://[::1/` doing that: urlsplit raises ValueError)."""
    from lienthong.upstream_policy import PolicyError, endpoints_of

    endpoints_of([url])  # the mesh's own endpoints are read from registered URLs the same way: never raises
    try:
        asyncio.run(UpstreamPolicy().check_url(url))
    except PolicyError:
        pass
