"""`lienthong up` and `lienthong demo`: the whole mesh on one machine, and the national procedure run across it.

Once up, they print the mesh's URLs (all https, verified with the mesh CA) and how to call it as a client system with
its TLS client certificate, with `lienthong call` and with curl, in lines of at most 80 columns so nothing is cut.
"""

from __future__ import annotations

import shlex
import signal
import sqlite3
import sys
import time
from pathlib import Path
from types import FrameType

import click
from rich.console import Console

from lienthong.cli.mesh_layout import CONNECTORS, HANOI_PORTAL, POPULATION, VERIFY
from lienthong.cli.mesh_up import Mesh, MeshConfig, start
from lienthong.cli.supervisor import StartFailed
from lienthong.home import home_option


def _options(f: click.decorators.FC) -> click.decorators.FC:
    decorators = [
        home_option("Folder for data, keys, logs and Redis."),
        click.option("--people", type=click.IntRange(min=100), default=100_000, show_default=True,
                     help="People to generate when no data exists yet."),
        click.option("--registry-port", type=click.IntRange(1, 65535), default=8600, show_default=True,
                     help="Port of the first registry; more registries take the next ones."),
        click.option("--registries", type=click.IntRange(1, 9), default=1, show_default=True,
                     help="Registry processes on the same Redis, any of which serves (gateways move between them)."),
        click.option("--gateway-port", type=click.IntRange(1, 65535), default=8700, show_default=True,
                     help="Port of the national gateway; Ha Noi and Nghe An take the next two."),
        click.option("--connector-port", type=click.IntRange(1, 65535), default=8801, show_default=True,
                     help="Port of the first connector; the others take the next ones."),
        click.option("--quiet-logs", is_flag=True, help="Keep component logs in files only (HOME/logs)."),
    ]  # fmt: skip
    for decorator in reversed(decorators):
        f = decorator(f)
    return f


def _config(home: Path, people: int, registry_port: int, gateway_port: int, connector_port: int,
            quiet_logs: bool, registries: int = 1) -> MeshConfig:  # fmt: skip
    config = MeshConfig(root=home, people=people, registry_port=registry_port, echo_logs=not quiet_logs,
                        registries=registries)  # fmt: skip
    config.gateway_ports = {code: gateway_port + i for i, code in enumerate(("national", "hanoi", "nghean"))}
    config.connector_ports = {spec.name: connector_port + i for i, spec in enumerate(CONNECTORS)}
    return config


def _urls(console: Console, mesh: Mesh) -> None:
    """Each URL on a line of its own, printed whole: a terminal of 80 columns may wrap it but never cuts it."""
    national = mesh.gateway_urls["national"]
    rows = [
        ("operations dashboard (log in with the next line's link)", f"{national}/ops/v1/dashboard"),
        ("its login link (15 min)", f"lienthong ops login --home {mesh.config.root} --gateway national"),
    ]
    for i, url in enumerate(mesh.registry_urls or [mesh.registry_url]):
        rows.append((f"registry {i + 1} API (Swagger UI)" if len(mesh.registry_urls) > 1
                     else "registry API (Swagger UI)", f"{url}/v1/ui/"))  # fmt: skip
    for code, url in mesh.gateway_urls.items():
        rows.append((f"gateway {code}: operations API (Swagger UI)", f"{url}/ops/v1/ui/"))
        rows.append((f"gateway {code}: Prometheus metrics", f"{url}/metrics"))
    # no connector link: a connector answers only its gateway's certificate, so a browser gets 401; its OpenAPI
    # document is the gateway's getOpenAPI metaservice (PR-MREST), called like any service
    console.rule("[bold]lienthong is up")
    for what, url in rows:
        console.print(f"{what}:", markup=False, highlight=False, soft_wrap=True)
        console.print(f"  {url}", markup=False, highlight=False, soft_wrap=True)
    for line in how_to_call(mesh):
        console.print(line, markup=False, highlight=False, soft_wrap=True)


def _example_person(mesh: Mesh) -> str:
    """A real personal ID the example call can ask for (a placeholder if the data cannot be read)."""
    try:
        with sqlite3.connect(mesh.config.paths.data / "population.sqlite") as db:
            row = db.execute("SELECT id FROM persons WHERE restricted = 0 ORDER BY id LIMIT 1").fetchone()
    except sqlite3.Error:
        row = None
    return str(row[0]) if row else "PERSONAL_ID"


def how_to_call(mesh: Mesh, subsystem: str = HANOI_PORTAL, gateway: str = "hanoi") -> list[str]:
    """Shell lines calling the population service as `subsystem` at its home gateway: by its client certificate
    (`lienthong call`, then curl), or by its JWT on a plain HTTP mesh. Long values are put in variables so that
    each line stays within 80 columns."""
    paths = mesh.config.paths
    target = f"{POPULATION}/persons/{_example_person(mesh)}"
    home = shlex.quote(str(mesh.config.root))
    lines = [f"  M={home}", f"  G={mesh.gateway_urls[gateway]}"]
    call = ["  lienthong call --home $M --gateway $G \\",
            f"    --as {subsystem} --purpose {VERIFY} \\"]  # fmt: skip
    if mesh.ca is None:
        key = paths.client_key(subsystem).relative_to(paths.root)
        return [f"How to call as {subsystem} (plain HTTP, a signed JWT):", *lines, *call[:1],
                f"    --key $M/{key} \\", call[1], f"    {target}"]  # fmt: skip
    tls = paths.client_tls(subsystem).relative_to(paths.root)
    return [
        f"How to call as {subsystem}, with its TLS client certificate:",
        *lines, *call, f"    {target}",
        "  # curl checks host names; mesh certificates name identities instead:",
        "  # -k skips the host name check, --pinnedpubkey checks the gateway's key",
        f"  C=$M/{tls}",
        f"  curl -k --pinnedpubkey {_key_pin(paths.gateway_tls(gateway))} \\",
        "    --cert $C/tls.crt --key $C/tls.key \\",
        f"    -H 'X-Road-Client: {subsystem}' \\",
        f"    -H 'X-Purpose: {VERIFY}' \\",
        f"    $G/r1/{target}",
    ]  # fmt: skip


def _key_pin(tls_dir: Path) -> str:
    """curl's --pinnedpubkey for the certificate in a CertFiles dir: sha256// and its public key's digest. The key
    is kept across renewals (lienthong.cert_renewal), so the pin stays good."""
    import base64
    import hashlib

    from cryptography.hazmat.primitives import serialization

    from lienthong import pki

    key = pki.load_cert(pki.CertFiles(tls_dir).cert).public_key()
    spki = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return "sha256//" + base64.b64encode(hashlib.sha256(spki).digest()).decode()


def _wait_for_ctrl_c(console: Console, mesh: Mesh) -> int:
    """Keep the mesh up until Ctrl-C: a component that dies is restarted with backoff while the rest keeps serving,
    and each change of what is down is printed. Then stop in dependency order."""
    stopping = False

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    mesh.supervisor.keep_alive()
    console.print("Press Ctrl-C to stop every process.")
    shown: list[str] = []
    while not stopping:
        down = [c.name for c in mesh.supervisor.down()]
        if down != shown:
            up = len(mesh.supervisor.components) - len(down)
            state = f"down: {', '.join(down)}" if down else "none down"
            mesh.supervisor.say(f"lienthong status: {up} of {len(mesh.supervisor.components)} components up, {state}")
            shown = down
        time.sleep(0.2)
    mesh.supervisor.say("lienthong stopping: gateways and connectors, then the registry, then Redis")
    mesh.stop()
    return 0


def _start(console: Console, config: MeshConfig) -> Mesh:
    try:
        return start(config, say=lambda text: console.print(f"[bold cyan]lienthong[/] {text}"))
    except StartFailed as exc:
        console.print(f"[red]the mesh could not start:[/] {exc}")
        sys.exit(1)
    except KeyboardInterrupt:  # Ctrl-C while starting: what had started is stopped already
        console.print("stopped before the mesh was up")
        sys.exit(130)


@click.command("up")
@_options
def up(home: Path, people: int, registry_port: int, registries: int, gateway_port: int, connector_port: int,
       quiet_logs: bool) -> None:  # fmt: skip
    """Start the whole mesh on this machine (Redis, registry, 3 gateways, 4 connectors) and keep it up."""
    console = Console()
    mesh = _start(console, _config(home, people, registry_port, gateway_port, connector_port, quiet_logs, registries))
    _urls(console, mesh)
    sys.exit(_wait_for_ctrl_c(console, mesh))


@click.command("demo")
@_options
@click.option("--once", is_flag=True, help="Run the demo, stop the mesh and exit 0 only if every step was as expected.")
@click.option("--burst", type=click.IntRange(min=1), default=300, show_default=True, help="Calls in the traffic burst.")
def demo(home: Path, people: int, registry_port: int, registries: int, gateway_port: int, connector_port: int,
         quiet_logs: bool, once: bool, burst: int) -> None:  # fmt: skip
    """Start the mesh and run the birth-to-health-card procedure, a refused one, a burst of traffic and metering."""
    from lienthong.cli.demo import Demo

    console = Console()
    config = _config(home, people, registry_port, gateway_port, connector_port, quiet_logs or once, registries)
    mesh = _start(console, config)
    try:
        report = Demo(mesh, console, burst=burst).run()
    except BaseException:
        mesh.stop()
        raise
    failed = [s for s in report.steps if not s.ok]
    for step in failed:
        console.print(f"[red]unexpected:[/] {step.name}: expected {step.expected}, got {step.status} {step.detail}")
    if report.metered != report.calls_sent:
        console.print(f"[red]metering mismatch:[/] sent {report.calls_sent}, metered {report.metered}")
    console.print("[green]demo: every step gave the expected answer[/]" if report.ok else "[red]demo: FAILED[/]")
    if once:
        for line in how_to_call(mesh):
            console.print(line, markup=False, highlight=False, soft_wrap=True)
        mesh.stop()
        sys.exit(0 if report.ok else 1)
    _urls(console, mesh)
    sys.exit(_wait_for_ctrl_c(console, mesh))


def register(group: click.Group) -> None:
    """Add `up` and `demo` to the top-level group."""
    group.add_command(up)
    group.add_command(demo)
