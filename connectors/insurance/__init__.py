"""The insurance connector: social and health insurance, served by Vietnam Social Security."""

from connectors.schema import insurance as schema
from connectors.sdk import OPENAPI_DIR, ConnectorDefinition

CONNECTOR = ConnectorDefinition(
    name="insurance",
    service_id="VN/GOV/BHXH/insurance/insurance",
    spec_path=OPENAPI_DIR / "insurance.yaml",
    handlers="connectors.insurance.handlers",
    title="National insurance database: social insurance records and health insurance cards",
    description="Insured people by social insurance number, health insurance cards and their validity, TE cards.",
    metadata=(schema.metadata,),
)
