"""Commands of this part (filled in by its issue)."""

from __future__ import annotations

import click


def register(group: click.Group) -> None:
    """Add this part's commands to the top-level group."""
    del group
