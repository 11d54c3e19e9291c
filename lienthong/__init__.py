"""lienthong: the shared kernel every part of the mesh stands on (identifiers, problems, keys, Redis, the CLI)."""

__version__ = "0.1.0"
