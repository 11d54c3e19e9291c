"""The population connector for case 6: generated data, the connector process, and direct calls with assertions.

Direct calls carry what the hosting gateway would send: a gateway assertion (protocol §4.2) signed with national's
key. The connector refuses a replayed assertion, so each request carries its own, made before the load phase.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import machine
from bench.measure import Case
from lienthong import tokens
from lienthong.redis_connection import free_port

SERVICE = "VN/GOV/BCA/population/persons"
FIELDS = ["id", "full_name", "birth_date", "sex", "household.id"]
CONSUMER = "VN/PROV/NGHEAN/civil-status"
LIENTHONG = str(Path(sys.executable).parent / "lienthong")


class Unavailable(Exception):
    """The connector case cannot run; the message says which part is missing."""


def _has(*words: str) -> bool:
    try:
        done = subprocess.run([LIENTHONG, *words, "--help"], capture_output=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


class Population:
    """A running population connector over freshly generated data; `person_id` is a person that exists."""

    def __init__(self, root: Path, database_url: str, person_id: str, port: int) -> None:
        self.root = root
        self.database_url = database_url
        self.person_id = person_id
        self.port = port
        self.proc: Any = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @classmethod
    def prepare(cls, root: Path, *, quick: bool, log: Callable[[str], None]) -> Population:
        """Generate the data and pick a person; the process starts in `start` once national's key is known."""
        if not _has("connector", "serve"):
            raise Unavailable("`lienthong connector serve` does not exist yet")
        if not _has("data", "generate"):
            raise Unavailable("`lienthong data generate` (the data generator's CLI) does not exist yet")
        people = 10_000 if quick else 100_000
        data = root / "data"
        log(f"generating {people:,} people for the connector case ...")
        done = subprocess.run([LIENTHONG, "data", "generate", "--people", str(people), "--seed", "6", "--out",
                               str(data)], capture_output=True, text=True, timeout=900, check=False)
        if done.returncode != 0:
            raise Unavailable(f"`lienthong data generate` failed: {(done.stderr or done.stdout).strip()[-600:]}")
        found = sorted(data.glob("*population*.sqlite")) or sorted(data.glob("*.sqlite"))
        if not found:
            raise Unavailable(f"`lienthong data generate --out {data}` wrote no population SQLite file")
        database_url = f"sqlite:///{found[0]}"
        return cls(root, database_url, _some_person(database_url, people), free_port())

    def start(self, gateway_key: Any, log_dir: Path) -> None:
        """Start the connector pinned to the server core, trusting only national's key (offline key file)."""
        from tests.procs import Proc

        keys_file = self.root / "gateway-keys.json"
        keys_file.write_text(json.dumps([gateway_key.jwk]))
        argv = [LIENTHONG, "connector", "serve", "population", "--host", "127.0.0.1", "--port", str(self.port),
                "--database-url", self.database_url, "--gateway", "national", "--gateway-keys", str(keys_file),
                "--workers", "1", "--log-level", "warning", "--insecure-http"]
        self.proc = Proc("connector-population", [*machine.server_prefix(), *argv], log_dir).start()
        self.proc.wait_http(f"{self.url}/healthz", timeout=60)

    def pids(self) -> list[int]:
        return [self.proc.process.pid] if self.proc is not None and self.proc.process is not None else []

    def assertions(self, gateway_key: Any) -> Callable[[int], tuple[str, list[str]]]:
        """Makes N single-use assertions as national would send them (aud connector:<service>, 30 s)."""

        def make(count: int) -> tuple[str, list[str]]:
            now = time.time()
            claims = {"iss": "national", "aud": f"connector:{SERVICE}", "sub": CONSUMER, "svc": SERVICE,
                      "purpose": "benchmark", "grant": "g-pop-1", "fields": FIELDS}
            values = [tokens.sign(gateway_key.key, gateway_key.kid, {**claims, "jti": uuid.uuid4().hex}, lifetime=30,
                                  now=now) for _ in range(count)]
            return "X-Lienthong-Assertion", values

        return make

    def direct_case(self, gateway_key: Any) -> Case:
        return Case("connector_direct", f"{self.url}/persons/{self.person_id}", cpu_pids=self.pids(),
                    tokens=self.assertions(gateway_key), token_rate_cap=4000)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()


def _some_person(database_url: str, people: int) -> str:
    import sqlalchemy as sa

    from connectors.schema.population import persons

    engine = sa.create_engine(database_url)
    try:
        with engine.connect() as conn:
            found = conn.execute(sa.select(persons.c.id).offset(people // 2).limit(1)).scalar()
    finally:
        engine.dispose()
    if not found:
        raise Unavailable("the generated population database has no person")
    return str(found)

