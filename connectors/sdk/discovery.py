"""Where connectors come from: the `lienthong.connectors` entry point group, or a module path. Lienthong is not edited
to add one.

A connector package declares in its pyproject.toml

    [project.entry-points."lienthong.connectors"]
    land-parcels = "my_province.land:CONNECTOR"

and once it is installed (`pip install .`), `lienthong connector serve land-parcels` serves it; the entry point's name
must be the ConnectorDefinition's `name`. The four built-in connectors are declared the same way in lienthong's own
pyproject.toml. Without installing anything, `lienthong connector serve --module my_province.land:CONNECTOR` serves
the ConnectorDefinition at that path (its folder on PYTHONPATH).

Listing reads installed metadata only; a connector's module is imported when it is loaded, so `lienthong --help`
stays fast and one broken package does not stop the others from being served."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points

from connectors.sdk.definition import ConnectorDefinition

GROUP = "lienthong.connectors"


class DiscoveryError(Exception):
    """A connector could not be found or loaded; the message says which and why."""


@dataclass(frozen=True)
class Source:
    """One connector declared by an installed distribution."""

    name: str  # the entry point's name: `lienthong connector serve NAME`
    target: str  # MODULE:ATTR of its ConnectorDefinition
    distribution: str  # "name version" of the package declaring it
    location: str  # where that package's metadata was found (site-packages, a PYTHONPATH folder)

    def as_dict(self) -> dict[str, str]:
        return {"name": self.name, "target": self.target, "distribution": self.distribution, "location": self.location}


def _source(ep: EntryPoint) -> Source:
    dist = ep.dist
    if dist is None:
        return Source(ep.name, ep.value, "unknown", "unknown")
    return Source(ep.name, ep.value, f"{dist.name} {dist.version}", str(dist.locate_file("")))


def sources() -> list[Source]:
    """Every declared connector, in name order; a name declared twice appears twice (see `find`)."""
    return sorted((_source(ep) for ep in entry_points(group=GROUP)), key=lambda s: (s.name, s.distribution))


def available() -> list[str]:
    """The names `lienthong connector serve NAME` accepts."""
    return sorted({s.name for s in sources()})


def find(name: str) -> Source:
    """The one installed connector called `name`."""
    found = [s for s in sources() if s.name == name]
    if not found:
        known = ", ".join(available()) or "none"
        raise DiscoveryError(
            f"no connector {name!r} is installed (entry point group {GROUP}; installed: {known}): install its package "
            "(`pip install PATH`), or serve it by module path with --module MODULE:ATTR"
        )
    if len(found) > 1:
        where = "; ".join(f"{s.target} from {s.distribution} at {s.location}" for s in found)
        raise DiscoveryError(f"connector {name!r} is declared more than once ({where}): uninstall all but one")
    return found[0]


def load_target(target: str) -> ConnectorDefinition:
    """The ConnectorDefinition at MODULE:ATTR (ATTR may be dotted)."""
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise DiscoveryError(f"{target!r} is not MODULE:ATTR, e.g. my_province.land:CONNECTOR")
    try:
        found: object = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise DiscoveryError(f"cannot import {module_name}: no module {exc.name!r} (is its package installed, "
                                 "or its folder on PYTHONPATH?)") from None  # fmt: skip
        raise DiscoveryError(f"cannot import {module_name}: {exc}") from None
    except Exception as exc:  # whatever the module raised on import is the reason it cannot be served
        raise DiscoveryError(f"cannot import {module_name}: {type(exc).__name__}: {exc}") from None
    for part in attr.split("."):
        try:
            found = getattr(found, part)
        except AttributeError:
            raise DiscoveryError(f"{module_name} has no {attr} (from {target})") from None
    if not isinstance(found, ConnectorDefinition):
        raise DiscoveryError(f"{target} is a {type(found).__name__}, not a connectors.sdk.ConnectorDefinition")
    return found


def load(name: str) -> ConnectorDefinition:
    """The installed connector `name`; its entry point's name and its definition's name must agree."""
    source = find(name)
    definition = load_target(source.target)
    if definition.name != name:
        raise DiscoveryError(
            f"entry point {name!r} ({source.target} from {source.distribution}) names a connector called "
            f"{definition.name!r}: rename one so they agree"
        )
    return definition
