"""The data generator: a synthetic but consistent country for the population, business, insurance and civil status
databases (valid IDs, resolving references, Vietnamese names, realistic spreads), deterministic by seed."""

from connectors.datagen.generate import (
    AS_OF,
    DATABASE_NAMES,
    GenerateError,
    GenerateResult,
    generate,
    postgres_urls,
    sqlite_urls,
)

__all__ = ["AS_OF", "DATABASE_NAMES", "GenerateError", "GenerateResult", "generate", "postgres_urls", "sqlite_urls"]
