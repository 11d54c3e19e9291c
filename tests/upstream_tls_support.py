"""Support for the outgoing-TLS tests (tests/test_upstream_tls.py, tests/test_connector_tls.py): certificates issued
directly by a test CA (pki.CertificateAuthority), and a small TLS server process that counts its connections.

`connector()` runs `lienthong connector serve NAME --tls-dir DIR` as a process.

Run as a module for the child process:
    python -m tests.upstream_tls_support count --tls-dir D --port P
It requires a client certificate chained to D/ca.crt and answers every request on a kept-alive connection with
{"connection": n, "requests": k, "resumed": bool, "client": identity}: n counts the TLS connections it accepted.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import shutil
import ssl
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import orjson
from cryptography import x509

from lienthong import pki
from lienthong.keys import save_private
from lienthong.redis_connection import free_port
from tests.connector_support import SigningGateway
from tests.procs import Proc, lienthong


@dataclass(frozen=True)
class IssuingCA:
    """A mesh CA in `root` that issues certificate directories (pki.CertFiles) for any identity."""

    root: Path
    ca: pki.CertificateAuthority

    @classmethod
    def make(cls, root: Path, name: str = "test mesh CA") -> IssuingCA:
        root.mkdir(parents=True, exist_ok=True)
        return cls(root, pki.CertificateAuthority.create(root / "ca.crt", root / "ca.key", name))

    @property
    def cert_path(self) -> Path:
        return self.root / "ca.crt"

    def issue(
        self, name: str, uri: str, *, lifetime: dt.timedelta = pki.DEFAULT_LIFETIME, now: dt.datetime | None = None,
        trust: Path | None = None,
    ) -> pki.CertFiles:  # fmt: skip
        """<root>/<name>/{tls.key, tls.crt, ca.crt}; ca.crt is this CA unless `trust` names another CA's file."""
        files = pki.CertFiles(self.root / name)
        files.directory.mkdir(parents=True, exist_ok=True)
        key = pki.new_tls_key()
        save_private(key, files.key)
        csr = x509.load_pem_x509_csr(pki.make_csr(key, uri))
        pki.write_cert(self.ca.issue(csr, uri, lifetime, now), files.cert)
        shutil.copyfile(trust or self.cert_path, files.ca)
        return files

    def serial(self, files: pki.CertFiles) -> int:
        return pki.load_cert(files.cert).serial_number


# -- connectors over TLS ------------------------------------------------------------------------------------------


@contextmanager
def connector(
    name: str, tls_dir: Path | None, gateway: SigningGateway, tmp_path: Path, ca: IssuingCA
) -> Iterator[tuple[str, Proc]]:
    """`lienthong connector serve NAME` as a process over TLS (plain HTTP when tls_dir is None), trusting `gateway`'s
    keys; yields its base URL and the process, once /healthz answers (as `gateway`, over TLS)."""
    keys_file = tmp_path / f"{name}-gateway-keys.json"
    keys_file.write_bytes(orjson.dumps(gateway.jwks))
    port = free_port()
    argv = lienthong("connector", "serve", name, "--port", str(port), "--gateway", gateway.code, "--gateway-keys",
                     str(keys_file), "--database-url", f"sqlite:///{tmp_path / (name + '.sqlite')}")  # fmt: skip
    argv += ["--tls-dir", str(tls_dir)] if tls_dir is not None else ["--insecure-http"]
    proc = Proc(f"{name}-{port}", argv, tmp_path).start()
    scheme = "https" if tls_dir is not None else "http"
    base = f"{scheme}://127.0.0.1:{port}"
    try:
        verify: ssl.SSLContext | bool = True
        if tls_dir is not None:
            verify = pki.client_context(ca.cert_path, ca.issue("probe", pki.identity("gateway", gateway.code)))
        deadline = time.monotonic() + 60
        while True:
            if proc.process is not None and proc.process.poll() is not None:
                raise RuntimeError(f"{name} exited:\n{proc.log_tail()}")
            try:
                if httpx.get(base + "/healthz", verify=verify, timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} never answered:\n{proc.log_tail()}")
            time.sleep(0.1)
        yield base, proc
    finally:
        proc.stop()


# -- the counting server -------------------------------------------------------------------------------------------


async def _count_server(files: pki.CertFiles, port: int) -> None:
    context = pki.server_context(files, "required")
    connections = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        number, requests = connections, 0
        ssl_object = writer.get_extra_info("ssl_object")
        peer = pki.Peer.of(ssl_object)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                if length:
                    await reader.readexactly(length)
                requests += 1
                body = orjson.dumps(
                    {
                        "connection": number,
                        "requests": requests,
                        "resumed": bool(ssl_object.session_reused),
                        "client": peer.identity if peer else None,
                    }
                )
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                             % (len(body), body))  # fmt: skip
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port, ssl=context)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=["count"])
    parser.add_argument("--tls-dir", type=Path, required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    asyncio.run(_count_server(pki.CertFiles(args.tls_dir), args.port))


if __name__ == "__main__":
    main()
