"""Where a gateway worker's time goes: py-spy on the national gateway under wrk load, as a flame graph and a top list.

    python -m bench.profile [--policies all|none|a,b] [--duration S] [--label before]

Writes bench/profiles/gateway-<policies>[-label].svg (flame graph) and .txt (top frames by own and by total samples).
py-spy is pip-installed into the venv when missing. Two py-spy samplers run side by side on the same processes (one
writes the SVG, one the collapsed stacks the top list is counted from), both non-blocking so the gateway is not paused.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import threading
from collections import Counter
from pathlib import Path

from bench import machine, mesh, nginx, wrk
from bench.loadgen import run_sync
from lienthong.cli.supervisor import Supervisor
from lienthong.redis_connection import EmbeddedRedis, free_port

PROFILES = Path(__file__).resolve().parent / "profiles"
# Frames every worker stack starts with (process start-up, the CLI, the worker's loop): not where time goes.
WRAPPERS = ("click/", "<module>", "gateway/cli.py", "gateway/workers.py", "uvloop/__init__.py", "asyncio/runners.py")


def py_spy() -> str:
    exe = Path(sys.executable).parent / "py-spy"
    if not exe.exists():
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "py-spy"], check=True)
    return str(exe) if exe.exists() else (shutil.which("py-spy") or "py-spy")


def top_entries(collapsed: str, limit: int = 25) -> str:
    """Top frames by own and by total samples, from py-spy's collapsed-stack ("raw") output.

    py-spy roots each stack in a "process N:..." frame; that is dropped. A sample with no Python frame is time in
    native code with the GIL released; it is counted apart. Wrapper frames on nearly every stack (the worker's
    bootstrap) are left out of the total list, which would otherwise be all wrappers.
    """
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = native = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f for f in stack.split(";") if not f.startswith("process ")]
        if not frames:
            native += count
            continue
        samples += count
        own[frames[-1]] += count
        for frame in set(frames):
            total[frame] += count
    if not samples:
        return f"no Python samples ({native} outside Python)\n"
    lines = [f"samples with Python frames: {samples}; without (native code, released GIL): {native}", "",
             f"top {limit} by own time (share of Python samples):"]
    lines += [f"{n / samples:7.1%}  {frame}" for frame, n in own.most_common(limit)]
    lines += ["", f"top {limit} by total time (frame anywhere on the stack; start-up wrappers left out):"]
    inner = [(frame, n) for frame, n in total.most_common() if not any(w in frame for w in WRAPPERS)][:limit]
    lines += [f"{n / samples:7.1%}  {frame}" for frame, n in inner]
    return "\n".join(lines) + "\n"


def profile(policies: str, duration: float, label: str | None) -> Path:
    PROFILES.mkdir(parents=True, exist_ok=True)
    name = f"gateway-{policies.replace(',', '-')}" + (f"-{label}" if label else "")
    reason = mesh.missing_parts()
    if reason or nginx.executable() is None:
        raise SystemExit(f"cannot profile: {reason or 'nginx is not installed'}")
    spy = py_spy()
    with tempfile.TemporaryDirectory(prefix="lienthong-profile-") as tmp_name:
        tmp = Path(tmp_name)
        sup = Supervisor(tmp / "logs", echo=False)
        redis = EmbeddedRedis(tmp / "redis", durable=False)
        bench: mesh.BenchMesh | None = None
        try:
            port = free_port()
            # the upstream runs beside the load generator: on the gateway's core, its work would run inside the
            # gateway's write() calls (loopback delivery wakes it there) and be sampled as the gateway's
            conf = nginx.upstream_conf(tmp / "nu", port)
            nginx.start(sup, "nginx-upstream", tmp / "nu", conf, port, pin=machine.loadgen_prefix())
            redis.start()
            bench = mesh.BenchMesh(tmp, f"http://127.0.0.1:{port}", redis.url)
            bench.publish_and_start_registry()
            bench.start_gateway(bench.national, policies)
            url = bench.url(bench.national, mesh.BENCH_SERVICE, f"/record/{mesh.SUBJECT}")
            headers = bench.headers(mesh.LOCAL_CONSUMER, "national")()
            pid = str(bench.pid(bench.national)[0])
            load = threading.Thread(target=_load, args=(url, headers, duration + 3), daemon=True)
            load.start()
            common = ["record", "--pid", pid, "--subprocesses", "--nonblocking", "--rate", "250",
                      "--duration", str(int(duration))]
            svg = subprocess.Popen([spy, *common, "--format", "flamegraph", "-o", str(PROFILES / f"{name}.svg")],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            raw_path = tmp / "stacks.txt"
            raw = subprocess.run([spy, *common, "--format", "raw", "-o", str(raw_path)], capture_output=True,
                                 text=True, timeout=duration + 60, check=False)
            svg.wait(timeout=60)
            load.join(timeout=duration + 30)
            if raw.returncode != 0 or not raw_path.exists():
                raise SystemExit(f"py-spy failed: {raw.stderr.strip()[-800:]}")
            text = f"gateway --policies {policies}, wrk/bench.loadgen at concurrency 32, {duration:g} s\n\n"
            text += top_entries(raw_path.read_text())
            (PROFILES / f"{name}.txt").write_text(text)
        finally:
            if bench is not None:
                bench.stop()
            redis.stop()
            sup.stop_all()
    return PROFILES / f"{name}.txt"


def _load(url: str, headers: dict[str, str], duration: float) -> None:
    if wrk.available():
        wrk.run(url, connections=32, duration=duration, headers=headers, prefix=machine.loadgen_prefix())
    else:
        run_sync(url, connections=32, duration=duration, headers=headers)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__.splitlines()[0])
    parser.add_argument("--policies", default="all")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--label", help="suffix for the output files, e.g. before / after")
    args = parser.parse_args(argv)
    out = profile(args.policies, args.duration, args.label)
    sys.stdout.write(out.read_text())
    sys.stdout.write(f"\nwrote {out} and {out.with_suffix('.svg')}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
