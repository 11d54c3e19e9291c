"""The data tracker ("who read my data", issue 19): every access to one person's data across the mesh, read from the
central transaction log by the person's pseudonyms, served by the mesh operator behind the national gateway."""

from connectors.sdk import OPENAPI_DIR, ConnectorDefinition

CONNECTOR = ConnectorDefinition(
    name="data-tracker",
    service_id="VN/GOV/BKHCN/data-tracker/accesses",
    spec_path=OPENAPI_DIR / "data-tracker.yaml",
    handlers="connectors.data_tracker.handlers",
    title="Data tracker: who read a person's data",
    description="Every access to one person's data across the mesh: when, which organization, which database, why.",
)
