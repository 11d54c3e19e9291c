"""Running wrk with a Lua `done()` hook that prints the figures as one JSON line, and parsing that line."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path

from bench.loadgen import LoadResult

MARKER = "WRKJSON "

# wrk's own summary is text meant for people; the hook prints exactly what the harness needs, in microseconds.
DONE_LUA = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d,' ..
    '"p50_us":%d,"p99_us":%d,"p999_us":%d,"mean_us":%.1f}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9), latency.mean))
end
"""


# One header value per request, read from a file: single-use tokens (a connector refuses a replayed assertion).
VARYING_LUA = r"""
local values = {}
for line in io.lines("%(path)s") do values[#values + 1] = line end
local i = 0
request = function()
  i = i + 1
  if i > #values then i = 1 end
  local headers = {}
  for k, v in pairs(wrk.headers) do headers[k] = v end
  headers["%(name)s"] = values[i]
  return wrk.format(nil, nil, headers)
end
"""


def available() -> str | None:
    return shutil.which("wrk")


def parse(output: str) -> LoadResult:
    """Read the hook's JSON line out of wrk's output; ValueError when it is missing."""
    for line in output.splitlines():
        if line.startswith(MARKER):
            data = json.loads(line[len(MARKER) :])
            break
    else:
        raise ValueError("wrk printed no WRKJSON line (did the Lua done() hook run?)")
    duration_s = data["duration_us"] / 1e6
    requests = int(data["requests"])
    errors = int(data["connect"] + data["read"] + data["write"] + data["timeout"])
    return LoadResult(
        requests=requests,
        errors=errors,
        non2xx=int(data["status"]),
        duration_s=round(duration_s, 3),
        rps=round(requests / duration_s, 1) if duration_s > 0 else 0.0,
        p50_ms=data["p50_us"] / 1000.0,
        p99_ms=data["p99_us"] / 1000.0,
        p999_ms=data["p999_us"] / 1000.0,
        mean_ms=data["mean_us"] / 1000.0,
        generator="wrk",
    )


def run(
    url: str,
    *,
    connections: int = 32,
    duration: float = 5.0,
    headers: dict[str, str] | None = None,
    prefix: list[str] | None = None,
    threads: int = 1,
    varying: tuple[str, Path] | None = None,
) -> LoadResult:
    """Run wrk (behind `prefix`, e.g. a taskset pin) and return its figures."""
    exe = available()
    if exe is None:
        raise FileNotFoundError("wrk is not installed")
    with tempfile.TemporaryDirectory(prefix="lienthong-wrk-") as tmp:
        script = Path(tmp) / "done.lua"
        lua = DONE_LUA
        if varying:
            lua = VARYING_LUA % {"name": varying[0], "path": str(varying[1])} + lua
        script.write_text(lua)
        args = [*(prefix or []), exe, f"-t{threads}", f"-c{connections}", f"-d{max(1, round(duration))}s",
                "--latency", "-s", str(script)]
        for name, value in (headers or {}).items():
            args += ["-H", f"{name}: {value}"]
        args.append(url)
        done = subprocess.run(args, capture_output=True, text=True, timeout=duration + 60, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"wrk exited with {done.returncode}: {done.stderr.strip()[-500:]}")
    return parse(done.stdout)
