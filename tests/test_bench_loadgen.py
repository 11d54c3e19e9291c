"""The Python load generator against a tiny real HTTP server: counts, statuses and latencies must be plausible."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from bench import loadgen
from bench.tls import BenchPKI
from lienthong import pki

REPO = Path(__file__).resolve().parent.parent


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the servers under test speak it

    def do_GET(self) -> None:
        if self.path.startswith("/slow"):
            time.sleep(0.02)
        if self.path.startswith("/chunked"):
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for part in (b'{"a":', b"1}"):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
            self.wfile.write(b"0\r\n\r\n")
            return
        status = 404 if self.path.startswith("/missing") else 200
        body = json.dumps({"seen": self.headers.get("X-Test", "")}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        return None


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_closed_loop_counts_requests_and_latencies(server: str) -> None:
    result = loadgen.run_sync(f"{server}/record", connections=4, duration=1.0, headers={"X-Test": "yes"})
    assert result.requests > 20
    assert result.errors == 0 and result.non2xx == 0
    assert result.statuses == {"200": result.requests}
    assert result.p50_ms is not None and result.p99_ms is not None and result.p999_ms is not None
    assert 0 < result.p50_ms <= result.p99_ms <= result.p999_ms < 1000
    assert result.rps == pytest.approx(result.requests / result.duration_s, rel=0.01)


def test_slow_answers_show_in_the_latency(server: str) -> None:
    result = loadgen.run_sync(f"{server}/slow", connections=2, duration=0.6)
    assert result.p50_ms is not None and result.p50_ms >= 20.0
    # Two connections, each waiting 20 ms per answer, cannot exceed about 100 answers a second.
    assert result.rps < 110


def test_non_2xx_answers_are_counted_apart(server: str) -> None:
    result = loadgen.run_sync(f"{server}/missing", connections=2, duration=0.3)
    assert result.requests > 0
    assert result.non2xx == result.requests
    assert result.statuses == {"404": result.requests}


def test_chunked_bodies_are_read_to_the_end(server: str) -> None:
    result = loadgen.run_sync(f"{server}/chunked", connections=2, duration=0.3)
    assert result.requests > 2 and result.errors == 0


def test_fixed_rate_sends_the_scheduled_number(server: str) -> None:
    result = loadgen.run_sync(f"{server}/record", rate=100, duration=1.0)
    assert result.requests == 100
    assert 0.95 <= result.duration_s < 2.0
    assert result.p50_ms is not None and result.p50_ms < 500


def test_refused_connections_are_errors_not_crashes() -> None:
    from lienthong.redis_connection import free_port

    result = loadgen.run_sync(f"http://127.0.0.1:{free_port()}/", connections=2, duration=0.3)
    assert result.requests == 0
    assert result.errors > 0
    assert result.p50_ms is None


def test_percentile_is_nearest_rank() -> None:
    values = [float(i) for i in range(1, 101)]
    assert loadgen.percentile(values, 50) == 50.0
    assert loadgen.percentile(values, 99) == 99.0
    assert loadgen.percentile(values, 99.9) == 100.0
    assert loadgen.percentile([], 50) is None


def test_command_line_prints_one_json_object(server: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.loadgen", f"{server}/record", "-c", "2", "-d", "0.5", "-H", "X-Test: cli"],
        capture_output=True, text=True, cwd=REPO, timeout=60, check=True,
    )
    data = json.loads(done.stdout)
    assert data["requests"] > 0 and data["generator"] == "python"


def test_command_line_refuses_a_bad_header() -> None:
    done = subprocess.run([sys.executable, "-m", "bench.loadgen", "http://127.0.0.1:1/", "-H", "nocolon"],
                          capture_output=True, text=True, cwd=REPO, timeout=60, check=False)
    assert done.returncode == 2
    assert "Name: value" in done.stderr


def test_only_http_and_https_are_supported() -> None:
    with pytest.raises(ValueError, match="https://"):
        loadgen.Target("ftp://example.org/")
    assert loadgen.Target("https://example.org/").port == 443
    assert loadgen.Target("https://example.org/").tls is not None and loadgen.Target("http://example.org/").tls is None


# -- over TLS (the bench's TLS cases): the bench CA, a server that requires a client certificate ------------------


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, BenchPKI]]:
    certs = BenchPKI(tmp_path_factory.mktemp("pki"))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    context = pki.server_context(certs.files("server", pki.identity("gateway", "national")), "required")
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"https://127.0.0.1:{httpd.server_address[1]}", certs
    httpd.shutdown()
    httpd.server_close()


def test_https_with_a_client_certificate(tls_server: tuple[str, BenchPKI]) -> None:
    url, certs = tls_server
    client = certs.client("VN/GOV/BTP/justice")
    result = loadgen.run_sync(f"{url}/record", connections=2, duration=0.5, tls=loadgen.tls_context(client.directory))
    assert result.requests > 5 and result.errors == 0 and result.statuses == {"200": result.requests}
    low = loadgen.run_sync(f"{url}/record", rate=50, duration=0.5, tls=loadgen.tls_context(client.directory))
    assert low.requests == 25 and low.errors == 0


def test_https_without_the_required_certificate_is_all_errors(tls_server: tuple[str, BenchPKI]) -> None:
    url, certs = tls_server
    only_ca = certs.root / "only-ca"
    only_ca.mkdir(exist_ok=True)
    shutil.copyfile(certs.ca_path, only_ca / "ca.crt")  # a CertFiles dir with no certificate: none is presented
    result = loadgen.run_sync(f"{url}/record", connections=2, duration=0.3, tls=loadgen.tls_context(only_ca))
    assert result.requests == 0 and result.errors > 0


def test_https_to_a_server_of_another_ca_is_all_errors(tls_server: tuple[str, BenchPKI], tmp_path: Path) -> None:
    url, _ = tls_server
    other = BenchPKI(tmp_path / "other")
    client = other.client("VN/GOV/BTP/justice")
    result = loadgen.run_sync(f"{url}/record", connections=2, duration=0.3, tls=loadgen.tls_context(client.directory))
    assert result.requests == 0 and result.errors > 0


def test_command_line_speaks_tls_with_a_tls_dir(tls_server: tuple[str, BenchPKI]) -> None:
    url, certs = tls_server
    client = certs.client("VN/GOV/BTP/justice")
    done = subprocess.run(
        [sys.executable, "-m", "bench.loadgen", f"{url}/record", "-c", "2", "-d", "0.5", "--tls-dir",
         str(client.directory)], capture_output=True, text=True, cwd=REPO, timeout=60, check=True,
    )  # fmt: skip
    data = json.loads(done.stdout)
    assert data["requests"] > 0 and data["errors"] == 0
