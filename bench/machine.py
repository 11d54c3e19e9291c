"""What the benchmark runs on and how processes are pinned: the servers on core 0, the load generator on core 1."""

from __future__ import annotations

import os
import platform
import shutil
from pathlib import Path


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe() -> dict[str, object]:
    return {"cores": cores(), "cpu_model": cpu_model(), "python": platform.python_version(),
            "kernel": platform.release()}


def _pin(core: int) -> list[str]:
    # With one core there is nothing to separate; pinning both to it would only add noise.
    if cores() < 2 or shutil.which("taskset") is None:
        return []
    allowed = sorted(os.sched_getaffinity(0))
    return ["taskset", "-c", str(allowed[core])]


def server_prefix() -> list[str]:
    """argv prefix that pins a server process to the first allowed core."""
    return _pin(0)


def loadgen_prefix() -> list[str]:
    """argv prefix that pins the load generator to the second allowed core."""
    return _pin(1)
