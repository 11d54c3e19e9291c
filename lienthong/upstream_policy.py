"""Where a service's upstream URL may point: the mesh's one address policy, checked by the registry when a service
is registered or changed and again by the hosting gateway for each new connection (issue 13, High 4).

Refused unless the operator allowlists them: loopback, link-local, unspecified and cloud metadata addresses (and
names such as `localhost` or `metadata.google.internal`), and the mesh's own endpoints: the registry, every gateway
and Redis. An allow entry is `HOST[:PORT]`, HOST an IP address, a CIDR network or a name; an entry without a port
lifts the address refusals for every port, but a mesh endpoint is only ever allowed by an entry naming its exact
port, so `127.0.0.1` in a test mesh still keeps its registry out of reach. A hostname is resolved and every address
it resolves to must pass: one refused answer refuses the URL.

The registry publishes the policy in the signed snapshot (`upstream_policy`: `allow` and `mesh` lists of
`host:port` strings); each gateway adds its own endpoints to the refused set.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Instance metadata services (AWS, GCP, Azure, Oracle: 169.254.169.254; AWS IPv6; Alibaba; AWS ECS task role).
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200", "169.254.170.2")
)
METADATA_NAMES = frozenset(
    {"metadata", "metadata.google.internal", "metadata.goog", "instance-data", "instance-data.ec2.internal",
     "metadata.azure.internal", "metadata.tencentyun.com"}
)  # fmt: skip
RESOLVE_TIMEOUT = 2.0


class PolicyError(ValueError):
    """An allow entry or URL that cannot be read."""


def _address(text: str) -> IPAddress | None:
    try:
        address = ipaddress.ip_address(text.strip("[]").split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1
    return address


def _name(host: str) -> str:
    return host.strip("[]").rstrip(".").lower()


def split_host_port(text: str) -> tuple[str, int | None]:
    """'h', 'h:80', '[::1]:80', '::1', '10.0.0.0/8' -> (host, port or None)."""
    text = text.strip()
    if text.startswith("[") and "]" not in text:
        raise PolicyError(f"{text!r} has no closing ']'")
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
        if rest and not rest.startswith(":"):
            raise PolicyError(f"{text!r} is not HOST[:PORT]")
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    else:
        host, port_text = text, ""
    if not host:
        raise PolicyError(f"{text!r} has no host")
    if not port_text:
        return host, None
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise PolicyError(f"{text!r} has no valid port")
    return host, int(port_text)


def url_endpoint(url: str) -> tuple[str, int]:
    """The host and port an http(s) URL connects to."""
    if not url.isascii() or not url.isprintable():
        raise PolicyError(f"{url!r} is not a URL: RFC 3986 URLs are printable ASCII (an international host name is "
                          "written in its punycode form)")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:  # "Invalid IPv6 URL", a port out of range or not a number
        raise PolicyError(f"{url!r} is not a valid URL: {exc}") from exc
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise PolicyError(f"{url!r} is not an http(s) URL")
    return _name(parts.hostname), port or (443 if parts.scheme == "https" else 80)


@dataclass(frozen=True, slots=True)
class AllowEntry:
    network: IPNetwork | None
    name: str | None
    port: int | None

    @classmethod
    def parse(cls, text: str) -> AllowEntry:
        host, port = split_host_port(text)
        try:
            network = ipaddress.ip_network(host.strip("[]"), strict=False)
        except ValueError:
            if not all(part.replace("-", "").isalnum() for part in _name(host).split(".")):
                raise PolicyError(f"{text!r}: {host!r} is neither an address, a network nor a host name") from None
            return cls(None, _name(host), port)
        return cls(network, None, port)

    def covers(self, name: str, address: IPAddress | None, port: int) -> bool:
        if self.port is not None and self.port != port:
            return False
        if self.name is not None:
            return self.name == name
        return address is not None and self.network is not None and address in self.network

    def __str__(self) -> str:
        host = self.name or (str(self.network.network_address) if self.network and self.network.prefixlen ==
                             self.network.max_prefixlen else str(self.network))  # fmt: skip
        host = f"[{host}]" if ":" in host and self.port is not None else host
        return host if self.port is None else f"{host}:{self.port}"


def parse_allow(text: str | Iterable[str]) -> tuple[AllowEntry, ...]:
    """A comma-separated (or listed) allowlist; raises PolicyError naming a bad entry."""
    items = text.split(",") if isinstance(text, str) else list(text)
    return tuple(AllowEntry.parse(item) for item in items if item.strip())


def category(address: IPAddress) -> str | None:
    """Why an address is refused by default, or None."""
    if address in METADATA_ADDRESSES:
        return "a cloud metadata address"
    if address.is_loopback:
        return "a loopback address"
    if address.is_link_local:
        return "a link-local address"
    if address.is_unspecified:
        return "the unspecified address (this host)"
    if address.is_multicast:
        return "a multicast address"
    return None


def name_category(name: str) -> str | None:
    if name == "localhost" or name.endswith(".localhost"):
        return "a loopback name"
    if name in METADATA_NAMES:
        return "a cloud metadata name"
    return None


@functools.cache
def _local_addresses() -> frozenset[IPAddress]:
    """This machine's own addresses, for a mesh endpoint that listens on 0.0.0.0 or ::."""
    found: set[IPAddress] = set()
    try:
        for info in socket.getaddrinfo(socket.gethostname(), None):
            address = _address(str(info[4][0]))
            if address is not None:
                found.add(address)
    except OSError:
        pass
    return frozenset(found)


@dataclass(slots=True)
class UpstreamPolicy:
    """The allowlist and the mesh's own endpoints (as `host:port`); immutable once built."""

    allow: tuple[AllowEntry, ...] = ()
    mesh: tuple[tuple[str, int], ...] = ()
    _mesh_names: frozenset[tuple[str, int]] = field(default=frozenset(), init=False)
    _mesh_addresses: frozenset[tuple[IPAddress, int]] = field(default=frozenset(), init=False)
    _mesh_wildcard_ports: frozenset[int] = field(default=frozenset(), init=False)
    _resolved: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        names, addresses, wildcard = set(), set(), set()
        for host, port in self.mesh:
            address = _address(host)
            if address is None:
                names.add((_name(host), port))
            elif address.is_unspecified:
                wildcard.add(port)
            else:
                addresses.add((address, port))
        self._mesh_names, self._mesh_addresses = frozenset(names), frozenset(addresses)
        self._mesh_wildcard_ports = frozenset(wildcard)

    # -- the published form --------------------------------------------------------------------------------------

    def to_doc(self) -> dict[str, list[str]]:
        return {"allow": [str(e) for e in self.allow], "mesh": [join_host_port(h, p) for h, p in self.mesh]}

    @classmethod
    def from_snapshot(cls, doc: dict[str, Any]) -> UpstreamPolicy:
        """A snapshot's policy, with every gateway of the snapshot among the mesh's endpoints. It never raises: an
        entry that cannot be read is left out (an allow entry less only refuses more)."""
        raw = doc.get("upstream_policy")
        raw = raw if isinstance(raw, dict) else {}
        allow: list[AllowEntry] = []
        mesh: list[tuple[str, int]] = []
        allow_items: list[Any] = raw["allow"] if isinstance(raw.get("allow"), list) else []
        mesh_items: list[Any] = raw["mesh"] if isinstance(raw.get("mesh"), list) else []
        for item in allow_items:
            try:
                allow.append(AllowEntry.parse(str(item)))
            except PolicyError:
                continue
        for item in mesh_items:
            try:
                host, port = split_host_port(str(item))
            except PolicyError:
                continue
            if port is not None:
                mesh.append((host, port))
        gateways: list[Any] = doc["gateways"] if isinstance(doc.get("gateways"), list) else []
        urls = [g.get("base_url") for g in gateways if isinstance(g, dict) and isinstance(g.get("base_url"), str)]
        return cls(tuple(allow), (*mesh, *endpoints_of(urls)))

    def with_mesh(self, extra: Iterable[tuple[str, int]]) -> UpstreamPolicy:
        return UpstreamPolicy(self.allow, (*self.mesh, *extra))

    # -- checks --------------------------------------------------------------------------------------------------

    def _allowed(self, name: str, address: IPAddress | None, port: int, exact_port: bool) -> bool:
        return any(e.covers(name, address, port) and (e.port is not None or not exact_port) for e in self.allow)

    def _is_mesh(self, address: IPAddress, port: int) -> bool:
        if (address, port) in self._mesh_addresses:
            return True
        # an endpoint listening on 0.0.0.0 or :: is reached through any address of its host
        return port in self._mesh_wildcard_ports and (
            address.is_loopback or address.is_unspecified or address in _local_addresses()
        )

    def refusal(self, name: str, port: int, addresses: Iterable[IPAddress]) -> str | None:
        """Why `name:port`, resolving to `addresses`, may not be an upstream; None when it may."""
        name = _name(name)
        literal = _address(name)
        if literal is None:
            if (name, port) in self._mesh_names and not self._allowed(name, None, port, True):
                return f"{name}:{port} is one of the mesh's own endpoints (registry, gateway or Redis)"
            why = name_category(name)
            if why and not self._allowed(name, None, port, False):
                return f"{name} is {why}"
        for address in [literal] if literal is not None else addresses:
            if self._is_mesh(address, port) and not self._allowed(name, address, port, True):
                return f"{address} port {port} is one of the mesh's own endpoints (registry, gateway or Redis)"
            why = category(address)
            if why and not self._allowed(name, address, port, False):
                return f"{name} resolves to {address}, {why}" if literal is None else f"{address} is {why}"
        return None

    async def resolved_refusal(self, host: str, port: int) -> tuple[str | None, list[IPAddress]]:
        """The gateway's check: a refused name is refused unresolved; else every address it resolves to (OSError
        when it resolves to none) is checked and returned, for the connection to use."""
        await self.resolve_mesh()
        why = self.refusal(host, port, [])
        if why is not None:
            return why, []
        addresses = await resolve(host, port)
        return self.refusal(host, port, addresses), addresses

    async def resolve_mesh(self) -> None:
        """Add the addresses the mesh's endpoint names resolve to (once per policy object)."""
        if self._resolved:
            return
        self._resolved = True
        found = set(self._mesh_addresses)
        for name, port in self._mesh_names:
            for address in await resolve(name, port, strict=False):
                found.add((address, port))
        self._mesh_addresses = frozenset(found)

    async def check_url(self, url: str) -> str | None:
        """The registry's check: resolve the URL's host (a name that does not resolve here is left to the
        hosting gateway, which checks again when it connects) and return why it is refused, or None."""
        host, port = url_endpoint(url)
        await self.resolve_mesh()
        return self.refusal(host, port, []) or self.refusal(host, port, await resolve(host, port, strict=False))


def join_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def resolve(host: str, port: int, *, strict: bool = True) -> list[IPAddress]:
    """Every address `host` resolves to; a failure raises OSError when strict, else gives []."""
    literal = _address(host)
    if literal is not None:
        return [literal]
    loop = asyncio.get_running_loop()
    try:
        infos = await asyncio.wait_for(
            loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP), RESOLVE_TIMEOUT
        )
    except (OSError, TimeoutError, UnicodeError) as exc:
        if strict:
            raise OSError(f"cannot resolve {host}: {exc}") from exc
        return []
    out: list[IPAddress] = []
    for info in infos:
        address = _address(str(info[4][0]))
        if address is not None and address not in out:
            out.append(address)
    return out


def endpoints_of(urls: Iterable[str | None]) -> list[tuple[str, int]]:
    """host:port of each http(s)/redis URL given (others and blanks are skipped)."""
    out: list[tuple[str, int]] = []
    for url in urls:
        if not url:
            continue
        try:
            parts = urlsplit(url)
            port = parts.port or {"http": 80, "https": 443, "redis": 6379, "rediss": 6379}.get(parts.scheme)
        except ValueError:  # "Invalid IPv6 URL", a bad port: not an endpoint of anything
            continue
        if parts.hostname and port:
            out.append((_name(parts.hostname), port))
    return out
