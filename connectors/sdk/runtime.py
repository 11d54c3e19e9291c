"""The live state of one connector: its definition, config, database engine and the gateway keys it trusts."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine

from connectors.sdk.config import ConnectorConfig
from connectors.sdk.definition import ConnectorDefinition
from connectors.sdk.gateway_keys import GatewayKeys
from connectors.sdk.registry_access import RegistryAccess


@dataclass
class Runtime:
    definition: ConnectorDefinition
    config: ConnectorConfig
    engine: Engine
    keys: GatewayKeys
    registry: RegistryAccess | None = None
    registered: bool = False
