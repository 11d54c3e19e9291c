"""Imports flow one way (issue 16): the kernel (lienthong/*.py) imports nothing above it, and no part imports the top.

Read from the source by an AST walk over every import, those inside functions too (a late import is still a
dependency): the kernel may import only itself and third-party packages; registry, gateway, policies and connectors
may import the kernel and each other but never `lienthong.cli` (the command line, `up`, `demo`, the supervisor), and
none of them imports `bench` or `tests`.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PARTS = ("registry", "gateway", "policies", "connectors")
TOP = "lienthong.cli"
ABOVE_THE_KERNEL = (*PARTS, TOP, "bench", "tests")


def imports_of(path: Path, package: str | None = None) -> list[tuple[int, str]]:
    """(line, module) of every import in a file, relative ones resolved against its package."""
    if package is None:
        package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join([*package.split(".")[: len(package.split(".")) - node.level + 1], base]).strip(".")
            # `from lienthong import cli` imports the module lienthong.cli
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
            found.append((node.lineno, base))
    return found


def _under(module: str, packages: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def kernel_files() -> list[Path]:
    return [p for p in sorted((ROOT / "lienthong").glob("*.py")) if p.name != "__main__.py"]  # __main__ runs the top


def test_the_kernel_imports_nothing_above_it() -> None:
    wrong = [f"{p.relative_to(ROOT)}:{line} imports {m}" for p in kernel_files() for line, m in imports_of(p)
             if _under(m, ABOVE_THE_KERNEL)]  # fmt: skip
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("part", PARTS)
def test_no_part_imports_the_top(part: str) -> None:
    wrong = [f"{p.relative_to(ROOT)}:{line} imports {m}" for p in sorted((ROOT / part).rglob("*.py"))
             for line, m in imports_of(p) if _under(m, (TOP, "bench", "tests"))]  # fmt: skip
    assert not wrong, "\n".join(wrong)


def test_the_walk_sees_late_relative_and_from_imports(tmp_path: Path) -> None:
    """The checks above can fail: the walk finds an import inside a function, a `from lienthong import cli` and a
    relative one."""
    sample = tmp_path / "sample.py"  # as if it were lienthong/sample.py
    sample.write_text("def f():\n    from registry.client import RegistryClient\n\nfrom lienthong import cli\n"
                      "from .cli import demo\n")  # fmt: skip
    modules = {m for _, m in imports_of(sample, package="lienthong")}
    assert {"registry.client", "lienthong.cli", "lienthong.cli.demo"} <= modules
    assert _under("registry.client", ABOVE_THE_KERNEL) and _under("lienthong.cli.demo", ABOVE_THE_KERNEL)
