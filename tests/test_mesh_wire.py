"""What crosses the mesh hop on the wire (issue 14): a recording TCP relay sits between the home gateway and the hosting
gateway (the snapshot names the relay as the hosting gateway's base_url; the relay forwards to its real port). A call
whose answer carries a name and a personal ID succeeds through it, and neither appears in the recorded bytes in
either direction when the mesh runs TLS. On a plaintext mesh the same relay reads both, so the test can fail.

The meshes here use the stand-in registry over HTTPS, so a gateway's snapshot client verifying an https registry with
the mesh CA (its --tls-dir ca.crt) is exercised too: without it no gateway would get a snapshot and become ready.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from lienthong.redis_connection import EmbeddedRedis, free_port
from tests.mesh_support import Mesh, call_headers

CLIENT = "VN/PROV/NGHEAN/civil-status"
PERSONS = "VN/GOV/BCA/population/persons"
PERSON_ID = "040203004567"
NAME = b"Nguyen Van A"


class Relay:
    """A TCP relay on a free port forwarding every connection to `target`, recording the bytes of each direction."""

    def __init__(self, target: int) -> None:
        self.port = free_port()
        self.target = target
        self.upstream = bytearray()  # home gateway -> hosting gateway
        self.downstream = bytearray()  # hosting gateway -> home gateway
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", self.port))
        self._ready.set()
        self._loop.run_forever()
        server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        target_reader, target_writer = await asyncio.open_connection("127.0.0.1", self.target)
        await asyncio.gather(self._pipe(reader, target_writer, self.upstream),
                             self._pipe(target_reader, writer, self.downstream))  # fmt: skip

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, record: bytearray) -> None:
        try:
            while data := await reader.read(65536):
                record.extend(data)
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    def start(self) -> Relay:
        self._thread.start()
        self._ready.wait(60)
        return self

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(60)


@contextmanager
def relayed_mesh(root: Path, redis_url: str, tls: bool) -> Iterator[tuple[Mesh, Relay]]:
    """nghean (home of CLIENT) calls PERSONS hosted at national through a relay in front of national."""
    mesh = Mesh(root, root / "logs", registry="standin", redis_url=redis_url, tls=tls)
    relay: Relay | None = None
    try:
        national = mesh.add_gateway("national")
        mesh.add_gateway("nghean")
        relay = Relay(national.port).start()
        scheme = "https" if tls else "http"
        entry = next(g for g in mesh.doc["gateways"] if g["code"] == "national")
        entry["base_url"] = f"{scheme}://127.0.0.1:{relay.port}"  # the mesh hop goes through the relay
        mesh.add_member("VN/GOV/BCA", "national")
        mesh.add_member("VN/PROV/NGHEAN", "nghean")
        for sub in ("VN/GOV/BCA/population", CLIENT):
            mesh.add_subsystem(sub)
        mesh.add_client(CLIENT)
        mesh.start_registry()
        mesh.add_service(PERSONS, "national", mesh.start_upstream("echo"), [("GET", "/persons/{id}")])
        mesh.add_grant("g", CLIENT, PERSONS, ["birth-registration"])
        mesh.publish()
        mesh.start_gateways({"national": {}, "nghean": {}})
        yield mesh, relay
    finally:
        mesh.stop()
        if relay is not None:
            relay.stop()


def _call(mesh: Mesh) -> bytes:
    home = mesh.gateways["nghean"]
    with home.client(timeout=30) as http:
        r = http.get(f"/r1/{PERSONS}/persons/{PERSON_ID}", headers=call_headers(mesh, CLIENT, "nghean"))
    assert r.status_code == 200, r.text
    assert r.json()["full_name"] == NAME.decode() and r.json()["id"] == PERSON_ID
    return r.content


@pytest.mark.parametrize("tls", [True, False], ids=["tls", "plaintext"])
def test_the_mesh_hop_carries_no_personal_data_in_clear(
    tmp_path: Path, redis_server: EmbeddedRedis, tls: bool
) -> None:  # fmt: skip
    with relayed_mesh(tmp_path, redis_server.url, tls) as (mesh, relay):
        assert mesh.gateways["nghean"].url.startswith("https://" if tls else "http://")
        _call(mesh)
        assert relay.upstream and relay.downstream, "the call did not cross the relay"
        seen = {
            "name, hosting -> home": NAME in relay.downstream,
            "personal ID, home -> hosting": PERSON_ID.encode() in relay.upstream,
            "personal ID, hosting -> home": PERSON_ID.encode() in relay.downstream,
        }
        if tls:
            assert relay.upstream[0] == 0x16, "the mesh hop does not start with a TLS handshake record"
            assert not any(seen.values()), f"in clear on the mesh hop: {[k for k, v in seen.items() if v]}"
        else:  # the relay can read a plaintext hop: the check above is able to fail
            assert all(seen.values()), seen
