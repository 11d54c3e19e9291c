"""The business registry connector: the national business registration database, served by the Ministry of Finance."""

from connectors.schema import business as schema
from connectors.sdk import OPENAPI_DIR, ConnectorDefinition

CONNECTOR = ConnectorDefinition(
    name="business-registry",
    service_id="VN/GOV/BTC/business-registry/enterprises",
    spec_path=OPENAPI_DIR / "business-registry.yaml",
    handlers="connectors.business_registry.handlers",
    title="National business registration database: enterprises",
    description="Enterprises and branches by code, name search, legal status, representative, owners, changes.",
    metadata=(schema.metadata,),
)
