"""Run the registry process: find Redis (REDIS_URL or the embedded one), build the app, serve it with uvicorn over
HTTPS (TLS 1.3, client certificate optional) with its own certificate from the mesh CA, renewed in place; or over
plain HTTP with --insecure-http, for local development only."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
import ssl
from pathlib import Path
from typing import Any

import uvicorn

from lienthong import pki
from lienthong.cert_renewal import CertificateRenewer, RenewalError
from lienthong.redis_connection import resolve_url
from registry import keyfiles, mesh_ca
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
    *,
    tls_dir: Path | None = None,
    insecure_http: bool = False,
    cert_lifetime: dt.timedelta = pki.DEFAULT_LIFETIME,
) -> None:
    """`tls_dir` holds the serving certificate (default <data dir>/tls, issued from the CA when missing or due)."""
    if not (data_dir / keyfiles.SIGNING_KEY).exists():
        raise NotInitialised(f"no registry key in {data_dir}; run `lienthong registry init --data-dir {data_dir}`")
    try:
        keyfiles.signing_key(data_dir)
    except ValueError as exc:  # checked before Redis starts, so a bad key file leaves nothing running
        path = data_dir / keyfiles.SIGNING_KEY
        raise NotInitialised(f"the registry signing key {path} cannot be read: {exc}") from exc
    try:
        issuer = mesh_ca.Issuer(mesh_ca.load_ca(data_dir), cert_lifetime)
    except mesh_ca.CAError as exc:
        raise NotInitialised(str(exc)) from exc
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    tls: dict[str, Any] = {}
    renewer = None
    if insecure_http:
        logging.getLogger("lienthong.registry").warning(
            "--insecure-http: the registry API is served over plain HTTP, tokens and keys cross in clear; "
            "for local development only")  # fmt: skip
    else:
        files = pki.CertFiles(tls_dir) if tls_dir is not None else mesh_ca.tls_files(data_dir)
        try:
            mesh_ca.ensure_own_certificate(files, issuer)
            context = pki.server_context(files, "optional")
        except (OSError, ValueError, RenewalError, ssl.SSLError) as exc:
            raise NotInitialised(f"the registry's TLS files in {files.directory} cannot be used: {exc}") from exc
        renewer = CertificateRenewer(files, mesh_ca.REGISTRY_IDENTITY, issuer.local_request(), [context])
        tls = {"ssl_context_factory": lambda _config, _default: context}  # the renewer reloads this very context
    embedded = None
    if redis_url is None:
        redis_url, embedded = resolve_url(redis_dir)
    from registry.app import create_app  # imported late: connexion's import is slow and init does not need it

    try:
        # Long polls park for up to 60 s; a stop must not wait for them (gateways simply ask again).
        own = dataclasses.replace(settings or RegistrySettings(), listen=(host, port))  # refused as an upstream
        app = create_app(data_dir, redis_url, own, issuer=issuer, renewer=renewer)
        config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                                timeout_graceful_shutdown=2, **tls)  # fmt: skip
        _Server(config).run()
    finally:
        if embedded is not None:
            embedded.stop()


class _Server(uvicorn.Server):
    """On SIGTERM/SIGINT, wakes the parked long polls so they answer before the graceful timeout cancels them."""

    def handle_exit(self, sig: int, frame: Any) -> None:
        super().handle_exit(sig, frame)
        from registry import runtime

        try:
            watch = runtime.current().watch
            loop = asyncio.get_running_loop()
        except RuntimeError:  # not serving yet: nothing is parked
            return
        loop.call_soon_threadsafe(watch.release)
