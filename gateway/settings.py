"""A gateway process's configuration, carried from the CLI to every worker process through LIENTHONG_* variables.

`gateway serve` forks its workers before any app exists and each builds its own, so the environment is the one
channel that reaches all of them; the CLI writes it, `GatewaySettings.from_env()` reads it in each worker.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from lienthong import ids
from lienthong.pki import CertFiles

DEFAULT_MAX_SNAPSHOT_AGE = 600  # seconds, as X-Road's global configuration validity (protocol §7)
DEFAULT_BODY_LIMIT = 1_048_576  # 1 MiB (protocol §6, 413 body-too-large)
DEFAULT_BREAKER_FAILURES = 5  # consecutive transport failures that open an upstream's circuit
DEFAULT_BREAKER_OPEN_SECONDS = 5.0  # how long an open circuit answers 503 before letting one probe through
DEFAULT_SNAPSHOT_WAIT = 30  # long-poll seconds asked of the registry
KEY_FILE = "gateway.key"  # the gateway's signing key (PEM), inside its data dir, unless --key says otherwise
ALL_POLICIES = ("authn", "authz", "quota", "minimize", "meter", "txlog", "audit", "trace")
DEFAULT_TXLOG_RETENTION_DAYS = 30  # days of the central transaction log kept (whole day partitions dropped)


def parse_policies(value: str) -> frozenset[str]:
    """'all', 'none' or a comma list of policy names."""
    text = value.strip().lower()
    if text in ("", "none"):
        return frozenset()
    if text == "all":
        return frozenset(ALL_POLICIES)
    names = frozenset(p.strip() for p in text.split(",") if p.strip())
    unknown = names - set(ALL_POLICIES)
    if unknown:
        raise ValueError(f"unknown policies {sorted(unknown)}; choose from {', '.join(ALL_POLICIES)}, all or none")
    return names


def parse_registry_urls(*values: str) -> tuple[str, ...]:
    """Registry base URLs from repeated options and comma lists (issue 17: any of several registries serves),
    in the order given, without trailing slashes or repeats."""
    urls: list[str] = []
    for value in values:
        for part in value.replace(",", " ").split():
            url = part.rstrip("/")
            if url and url not in urls:
                urls.append(url)
    return tuple(urls)


def parse_listen(value: str) -> tuple[str, int]:
    """'HOST:PORT' or '[V6]:PORT' -> (host, port); ValueError naming the value otherwise."""
    host, sep, port = value.strip().rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--ops-listen {value!r} is not HOST:PORT")
    return host, int(port)


@dataclass(frozen=True, slots=True)
class GatewaySettings:
    code: str
    registry_url: str  # one base URL, or several comma-separated: the snapshot poll moves to the next on failure
    registry_key_file: Path  # the registry's public JWK, given at install
    key_file: Path  # this gateway's private key (PEM)
    kid: str
    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 8700
    workers: int = 1
    max_snapshot_age: float = DEFAULT_MAX_SNAPSHOT_AGE
    body_limit: int = DEFAULT_BODY_LIMIT
    policies: frozenset[str] = field(default_factory=lambda: frozenset(ALL_POLICIES))
    redis_url: str = "redis://127.0.0.1:6379/0"
    audit_hmac_key: bytes = b""
    trace_sample_ratio: float = 0.0
    breaker_failures: int = DEFAULT_BREAKER_FAILURES
    breaker_open_seconds: float = DEFAULT_BREAKER_OPEN_SECONDS
    snapshot_wait: int = DEFAULT_SNAPSHOT_WAIT
    ops_listen: str = ""  # HOST:PORT for the ops API and /metrics on their own socket; "" serves them on the main one
    ops_hosts: tuple[str, ...] = ()  # more names the ops API answers to (Host), e.g. behind a proxy
    ops_operator_keys: tuple[Path, ...] = ()  # public JWK files trusted, with the gateway's own key, for operators
    tls_dir: Path | None = None  # tls.key, tls.crt, ca.crt (pki.CertFiles); None: <data-dir>/tls
    insecure_http: bool = False  # plain HTTP on every port: local development only
    transaction_log_url: str = ""  # TRANSACTION_LOG_URL: postgresql://... or sqlite:///...; "" = SQLite in data_dir
    transaction_log_retention_days: int = DEFAULT_TXLOG_RETENTION_DAYS

    def __post_init__(self) -> None:
        ids.validate("gateway", self.code, "code")
        if not self.registry_urls:
            raise ValueError("no registry URL given")
        if self.max_snapshot_age <= 0:
            raise ValueError("max_snapshot_age must be positive")
        if self.body_limit <= 0:
            raise ValueError("body_limit must be positive")
        if self.ops_listen:
            parse_listen(self.ops_listen)

    @property
    def registry_urls(self) -> tuple[str, ...]:
        return parse_registry_urls(self.registry_url)

    @property
    def ops_address(self) -> tuple[str, int] | None:
        return parse_listen(self.ops_listen) if self.ops_listen else None

    @property
    def cert_files(self) -> CertFiles:
        return CertFiles(self.tls_dir or self.data_dir / "tls")

    @property
    def scheme(self) -> str:
        return "http" if self.insecure_http else "https"

    @property
    def snapshot_cache(self) -> Path:
        return self.data_dir / "snapshot.jsonl"

    @property
    def metrics_dir(self) -> Path:
        return self.data_dir / "metrics"

    def to_env(self) -> dict[str, str]:
        return {
            "LIENTHONG_GATEWAY_CODE": self.code,
            "LIENTHONG_REGISTRY_URL": ",".join(self.registry_urls),
            "LIENTHONG_REGISTRY_KEY": str(self.registry_key_file),
            "LIENTHONG_GATEWAY_KEY": str(self.key_file),
            "LIENTHONG_GATEWAY_KID": self.kid,
            "LIENTHONG_DATA_DIR": str(self.data_dir),
            "LIENTHONG_HOST": self.host,
            "LIENTHONG_PORT": str(self.port),
            "LIENTHONG_WORKERS": str(self.workers),
            "LIENTHONG_MAX_SNAPSHOT_AGE": str(self.max_snapshot_age),
            "LIENTHONG_BODY_LIMIT": str(self.body_limit),
            "LIENTHONG_POLICIES": ",".join(sorted(self.policies)) or "none",
            "REDIS_URL": self.redis_url,
            "LIENTHONG_AUDIT_HMAC_KEY": self.audit_hmac_key.hex(),
            "LIENTHONG_TRACE_SAMPLE_RATIO": str(self.trace_sample_ratio),
            "LIENTHONG_BREAKER_FAILURES": str(self.breaker_failures),
            "LIENTHONG_BREAKER_OPEN_SECONDS": str(self.breaker_open_seconds),
            "LIENTHONG_SNAPSHOT_WAIT": str(self.snapshot_wait),
            "LIENTHONG_OPS_LISTEN": self.ops_listen,
            "LIENTHONG_OPS_HOSTS": ",".join(self.ops_hosts),
            "LIENTHONG_OPS_OPERATOR_KEYS": os.pathsep.join(str(k) for k in self.ops_operator_keys),
            "LIENTHONG_TLS_DIR": str(self.tls_dir or ""),
            "LIENTHONG_INSECURE_HTTP": "1" if self.insecure_http else "",
            "TRANSACTION_LOG_URL": self.transaction_log_url,
            "TRANSACTION_LOG_RETENTION_DAYS": str(self.transaction_log_retention_days),
        }

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> GatewaySettings:
        e = os.environ if env is None else env

        def need(name: str) -> str:
            value = e.get(name)
            if not value:
                raise ValueError(f"{name} is not set")
            return value

        return cls(
            code=need("LIENTHONG_GATEWAY_CODE"),
            registry_url=",".join(parse_registry_urls(need("LIENTHONG_REGISTRY_URL"))),
            registry_key_file=Path(need("LIENTHONG_REGISTRY_KEY")),
            key_file=Path(need("LIENTHONG_GATEWAY_KEY")),
            kid=need("LIENTHONG_GATEWAY_KID"),
            data_dir=Path(need("LIENTHONG_DATA_DIR")),
            host=e.get("LIENTHONG_HOST", "127.0.0.1"),
            port=int(e.get("LIENTHONG_PORT", "8700")),
            workers=int(e.get("LIENTHONG_WORKERS", "1")),
            max_snapshot_age=float(e.get("LIENTHONG_MAX_SNAPSHOT_AGE", str(DEFAULT_MAX_SNAPSHOT_AGE))),
            body_limit=int(e.get("LIENTHONG_BODY_LIMIT", str(DEFAULT_BODY_LIMIT))),
            policies=parse_policies(e.get("LIENTHONG_POLICIES", "all")),
            redis_url=e.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
            audit_hmac_key=bytes.fromhex(e.get("LIENTHONG_AUDIT_HMAC_KEY", "")),
            trace_sample_ratio=float(e.get("LIENTHONG_TRACE_SAMPLE_RATIO", "0")),
            breaker_failures=int(e.get("LIENTHONG_BREAKER_FAILURES", str(DEFAULT_BREAKER_FAILURES))),
            breaker_open_seconds=float(e.get("LIENTHONG_BREAKER_OPEN_SECONDS", str(DEFAULT_BREAKER_OPEN_SECONDS))),
            snapshot_wait=int(e.get("LIENTHONG_SNAPSHOT_WAIT", str(DEFAULT_SNAPSHOT_WAIT))),
            ops_listen=e.get("LIENTHONG_OPS_LISTEN", ""),
            ops_hosts=tuple(h for h in e.get("LIENTHONG_OPS_HOSTS", "").split(",") if h),
            ops_operator_keys=tuple(Path(k) for k in e.get("LIENTHONG_OPS_OPERATOR_KEYS", "").split(os.pathsep) if k),
            tls_dir=Path(e["LIENTHONG_TLS_DIR"]) if e.get("LIENTHONG_TLS_DIR") else None,
            insecure_http=e.get("LIENTHONG_INSECURE_HTTP", "").lower() in ("1", "true", "yes"),
            transaction_log_url=e.get("TRANSACTION_LOG_URL", ""),
            transaction_log_retention_days=int(
                e.get("TRANSACTION_LOG_RETENTION_DAYS", str(DEFAULT_TXLOG_RETENTION_DAYS))
            ),
        )
