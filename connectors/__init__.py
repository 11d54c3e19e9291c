"""Connectors: the SDK and the national (population, business registry, insurance) and provincial connectors."""
