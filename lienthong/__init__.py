"""lienthong: the shared kernel every part of the mesh stands on (identifiers, problems, keys, Redis, the CLI)."""

import warnings

__version__ = "0.1.0"

# connexion imports starlette's TestClient at import time, which warns about httpx on every command we run;
# the mesh never uses that TestClient, so the warning is noise to an operator.
warnings.filterwarnings("ignore", message=r"Using `httpx` with `starlette.testclient` is deprecated")
