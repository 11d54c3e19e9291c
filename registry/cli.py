"""Commands of the registry part: `lienthong registry init|serve` and the admin commands, which all go through the
registry's API (never around it)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from registry import keyfiles

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_DATA_DIR = "var/registry"


@click.group("registry")
def registry_group() -> None:
    """Run the shared service registry."""


@registry_group.command("init")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path),
              default=lambda: os.environ.get("LIENTHONG_REGISTRY_DATA_DIR", DEFAULT_DATA_DIR), show_default=True,
              help="where the registry keeps its keys")  # fmt: skip
def init_cmd(data_dir: Path) -> None:
    """Create the registry's signing key and the first admin key (once; never overwrites)."""
    try:
        result = keyfiles.init(data_dir)
    except keyfiles.AlreadyInitialised as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"registry signing key:  {result.signing_key}")
    click.echo(f"registry public JWK:   {result.signing_pub}   (give this to every gateway at install time)")
    click.echo(f"admin key:             {result.admin_key}   (kid {result.admin_kid}, iss 'admin')")
    click.echo(f"admin public JWK:      {result.admin_pub}")


@registry_group.command("serve")
@click.option("--host", default=lambda: os.environ.get("LIENTHONG_REGISTRY_HOST", "127.0.0.1"), show_default=True)
@click.option("--port", type=int, default=lambda: int(os.environ.get("LIENTHONG_REGISTRY_PORT", "8600")),
              show_default=True)  # fmt: skip
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path),
              default=lambda: os.environ.get("LIENTHONG_REGISTRY_DATA_DIR", DEFAULT_DATA_DIR),
              show_default=True)  # fmt: skip
@click.option("--redis-url", default=lambda: os.environ.get("REDIS_URL"),
              help="Redis to use (env REDIS_URL); without it an embedded, durable redis-server is used")  # fmt: skip
@click.option("--redis-dir", type=click.Path(file_okay=False, path_type=Path), default="var/redis", show_default=True,
              help="data dir of the embedded Redis")  # fmt: skip
def serve_cmd(host: str, port: int, data_dir: Path, redis_url: str | None, redis_dir: Path) -> None:
    """Serve the registry API under /v1 (Swagger UI at /v1/ui, health at /healthz)."""
    from registry.serve import NotInitialised, serve

    try:
        serve(host, port, data_dir, redis_url, redis_dir)
    except NotInitialised as exc:
        raise click.ClickException(str(exc)) from exc


def _echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, ensure_ascii=False))


def register(group: click.Group) -> None:
    """Add this part's commands to the top-level group."""
    group.add_command(registry_group)
