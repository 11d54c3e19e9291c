#!/bin/sh
# Regenerate requirements.lock, the pinned and hashed runtime dependencies helm/Dockerfile installs, from
# pyproject.toml's [project] dependencies. Run from anywhere, with the project's venv (pip-tools installed there):
#   .venv/bin/pip install pip-tools && sh helm/lock.sh
# It resolves for the interpreter that runs it: use Python 3.11 on Linux x86_64, as the image does.
set -eu
cd "$(dirname "$0")/.."
PIP_COMPILE=${PIP_COMPILE:-.venv/bin/pip-compile}
"$PIP_COMPILE" --quiet --generate-hashes --allow-unsafe --strip-extras --no-emit-index-url --no-emit-find-links \
  --output-file requirements.lock pyproject.toml
