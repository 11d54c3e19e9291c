"""The registry's ASGI app: connexion 3 built from openapi/registry.yaml under /v1, with every error answered as
problem+json naming the field, /healthz, and the runtime (Redis, store, snapshot builder, version watch)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import connexion
from connexion.lifecycle import ConnexionRequest, ConnexionResponse
from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from lienthong.api_problems import add_problem_handlers, problem_response, validator_map
from lienthong.cert_renewal import CertificateRenewer
from lienthong.problem import Problem
from lienthong.redis_connection import async_single_client
from registry import keyfiles, mesh_ca, runtime, service_rules
from registry.settings import RegistrySettings
from registry.snapshot_builder import SnapshotBuilder
from registry.store import Store, Tx
from registry.version_watch import VersionWatch

log = logging.getLogger("lienthong.registry")

SPEC = Path(__file__).resolve().parent.parent / "openapi" / "registry.yaml"
MAX_BODY_BYTES = 1024 * 1024


def on_redis_error(request: ConnexionRequest, exc: Exception) -> ConnexionResponse:
    log.warning("redis unavailable: %s", exc)
    problem = Problem(503, "storage-unavailable", "the registry's storage is unavailable", headers={"Retry-After": "1"})
    return problem_response(problem, request.url.path)


async def ensure_admin_keys(store: Store, data_dir: Path) -> None:
    """Register the admin public keys kept in the data dir (written by init), once each."""
    for jwk in keyfiles.admin_public_jwks(data_dir):
        kid = jwk["kid"]

        async def change(tx: Tx, jwk: dict[str, Any] = jwk, kid: str = kid) -> None:
            if await tx.get("admins", kid) is not None:
                return
            tx.put("admins", kid, None, {"kid": kid, "jwk": jwk, "revoked": False}, "admins.create")
            tx.index_kid(kid, "admin", kid)

        await store.change("system:init", change)


REDIS_POOL = 256  # connections; past them a request waits for one rather than failing (issue 17: 100 gateways)


def create_app(
    data_dir: str | Path, redis_url: str, settings: RegistrySettings | None = None, *,
    issuer: mesh_ca.Issuer | None = None, renewer: CertificateRenewer | None = None,
) -> connexion.AsyncApp:  # fmt: skip
    """`issuer` defaults to the data dir's CA with 30-day certificates; `renewer` keeps the serving certificate."""
    data = Path(data_dir)
    signing, kid = keyfiles.signing_key(data)
    issuer = issuer or mesh_ca.Issuer(mesh_ca.load_ca(data))
    settings = settings or RegistrySettings()
    published = service_rules.policy(settings, redis_url).to_doc()

    @contextlib.asynccontextmanager
    async def lifespan(_app: Any) -> AsyncIterator[None]:
        # MULTI over many keys, streams: one primary; long polls wake together, so a burst waits for a connection
        redis = async_single_client(redis_url, who="the registry", pool=REDIS_POOL)
        store = Store(redis)
        watch = VersionWatch(redis)
        builder = SnapshotBuilder(redis, signing, kid, upstream_policy=published, ca_pems=(issuer.ca_pem,))
        rt = runtime.Runtime(redis, store, builder, watch, data, settings, redis_url, issuer)
        await ensure_admin_keys(store, data)
        watch.start()
        runtime.install(rt)
        if renewer is not None:
            renewer.start()
        try:
            yield
        finally:
            if renewer is not None:
                await renewer.stop()
            runtime.install(None)
            await watch.stop()
            await redis.aclose()

    app = connexion.AsyncApp(__name__, lifespan=lifespan, validator_map=validator_map(), strict_validation=True)
    app.add_api(SPEC, base_path="/v1", swagger_ui_options=connexion.options.SwaggerUIOptions(swagger_ui_path="/ui"))
    app.add_url_rule("/healthz", "healthz", healthz, methods=["GET"])
    add_problem_handlers(app, "registry")
    app.add_error_handler(RedisError, on_redis_error)
    return app


async def healthz(_request: Request) -> Response:
    try:
        await runtime.current().redis.ping()
    except (RedisError, OSError, RuntimeError):
        return JSONResponse({"status": "unavailable", "redis": False}, status_code=503)
    return JSONResponse({"status": "ok", "redis": True})
