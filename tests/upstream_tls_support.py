"""Support for the outgoing-TLS tests (tests/test_upstream_tls.py, tests/test_connector_tls.py): certificates issued
directly by a test CA (pki.CertificateAuthority), and a small TLS server process that counts its connections.

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
from dataclasses import dataclass
from pathlib import Path

import orjson
from cryptography import x509

from lienthong import pki
from lienthong.keys import save_private


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
