"""Run the registry process: find Redis (REDIS_URL or the embedded one), build the app, serve it with uvicorn."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import uvicorn

from lienthong.redis_connection import resolve_url
from registry import keyfiles
from registry.settings import RegistrySettings


class NotInitialised(Exception):
    """serve was asked to run before `lienthong registry init`."""


def serve(
    host: str,
    port: int,
    data_dir: Path,
    redis_url: str | None,
    redis_dir: Path,
    settings: RegistrySettings | None = None,
) -> None:
    if not (data_dir / keyfiles.SIGNING_KEY).exists():
        raise NotInitialised(f"no registry key in {data_dir}; run `lienthong registry init --data-dir {data_dir}`")
    try:
        keyfiles.signing_key(data_dir)
    except ValueError as exc:  # checked before Redis starts, so a bad key file leaves nothing running
        path = data_dir / keyfiles.SIGNING_KEY
        raise NotInitialised(f"the registry signing key {path} cannot be read: {exc}") from exc
    embedded = None
    if redis_url is None:
        redis_url, embedded = resolve_url(redis_dir)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    from registry.app import create_app  # imported late: connexion's import is slow and init does not need it

    try:
        # Long polls park for up to 60 s; a stop must not wait for them (gateways simply ask again).
        own = dataclasses.replace(settings or RegistrySettings(), listen=(host, port))  # refused as an upstream
        app = create_app(data_dir, redis_url, own)
        uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False,
                    timeout_graceful_shutdown=2)  # fmt: skip
    finally:
        if embedded is not None:
            embedded.stop()
