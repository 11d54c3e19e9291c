"""The population connector: the national population database, served by the Ministry of Public Security."""

from connectors.schema import population as schema
from connectors.sdk import OPENAPI_DIR, ConnectorDefinition

CONNECTOR = ConnectorDefinition(
    name="population",
    service_id="VN/GOV/BCA/population/persons",
    spec_path=OPENAPI_DIR / "population.yaml",
    handlers="connectors.population.handlers",
    title="National population database: persons",
    description="Persons, households, residence history, identity verification and newborn registration.",
    metadata=(schema.metadata,),
)
