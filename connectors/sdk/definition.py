"""What a connector is: its service identity, its OpenAPI document, its handlers and its tables."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import MetaData

from lienthong import ids

OPENAPI_DIR = Path(__file__).resolve().parents[2] / "openapi"


@dataclass(frozen=True)
class ConnectorDefinition:
    """One connector. A provincial integrator writes one of these, a handlers module and an OpenAPI file."""

    name: str  # CLI name, e.g. "population"
    service_id: str  # VN/CLASS/MEMBER/SUBSYSTEM/SERVICE
    spec_path: Path
    handlers: str  # dotted module whose functions are named after the spec's operationIds
    title: str
    description: str = ""
    version_label: str = "v1"
    timeout_ms: int = 5000
    metadata: tuple[MetaData, ...] = field(default_factory=tuple)  # tables created on start if missing

    def __post_init__(self) -> None:
        ids.validate("service", self.service_id, "service_id")
        ids.validate("version", self.version_label, "version_label")

    @property
    def subsystem(self) -> str:
        return self.service_id.rsplit("/", 1)[0]

    @property
    def audience(self) -> str:
        return f"connector:{self.service_id}"
