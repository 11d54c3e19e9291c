"""Install nginx and wrk from Debian's packages when missing and allowed (root with apt-get); never fatal."""

from __future__ import annotations

import os
import shutil
import subprocess

from bench import nginx, wrk


def _apt(*args: str) -> bool:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        done = subprocess.run(["apt-get", *args], capture_output=True, text=True, env=env, timeout=600, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def ensure_tools(log: list[str]) -> None:
    """Try to install what is missing; append to `log` what happened so the report can say it."""
    missing = [pkg for pkg, present in (("nginx-light", nginx.executable()), ("wrk", wrk.available())) if not present]
    if not missing:
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        log.append(f"not installing {', '.join(missing)}: needs root and apt-get")
        return
    if not _apt("install", "-y", "--no-install-recommends", *missing):
        _apt("update")
        if not _apt("install", "-y", "--no-install-recommends", *missing) and "nginx-light" in missing:
            # Some releases only ship the full package.
            _apt("install", "-y", "--no-install-recommends", "nginx", *[m for m in missing if m != "nginx-light"])
    still = [pkg for pkg, present in (("nginx", nginx.executable()), ("wrk", wrk.available())) if not present]
    log.append(f"installed {', '.join(missing)}" if not still else f"could not install {', '.join(still)}")
