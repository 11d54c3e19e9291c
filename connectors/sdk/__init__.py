"""The connector SDK: a connector is a ConnectorDefinition (service id, OpenAPI file, handlers module, tables) turned
into an ASGI app by build_app. Handlers read the verified gateway assertion with current_call() and the database
with current_runtime().engine, and answer found (200), no data (404 `not-found`) or not permitted (403
`not-permitted`)."""

from connectors.sdk.app import ConnectorApp, build_app
from connectors.sdk.call import CallInfo, current_call, current_runtime, nest, not_found, not_permitted
from connectors.sdk.config import ConnectorConfig, default_database_url
from connectors.sdk.definition import OPENAPI_DIR, ConnectorDefinition
from connectors.sdk.idempotency import run_idempotent

__all__ = [
    "OPENAPI_DIR",
    "CallInfo",
    "ConnectorApp",
    "ConnectorConfig",
    "ConnectorDefinition",
    "build_app",
    "current_call",
    "current_runtime",
    "default_database_url",
    "nest",
    "not_found",
    "not_permitted",
    "run_idempotent",
]
