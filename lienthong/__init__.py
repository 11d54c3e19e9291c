"""lienthong: the shared kernel every part of the mesh stands on (identifiers, problems, keys, tokens, PKI, the
snapshot reader, subjects, Redis, the mesh home). It imports nothing above it: the command line, `up`, `demo` and the
supervisor live in `lienthong.cli`, on top of the parts (tests/test_layering.py holds both rules)."""

import warnings

__version__ = "0.1.0"

# connexion imports starlette's TestClient at import time, which warns about httpx on every command we run;
# the mesh never uses that TestClient, so the warning is noise to an operator.
warnings.filterwarnings("ignore", message=r"Using `httpx` with `starlette.testclient` is deprecated")
