"""docs/security.md names, for each class of attack, the test that proves its mechanism: every test it names must
exist, so a renamed or deleted test cannot leave the threat model pointing at nothing."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TESTS = REPO / "tests"


def _defined_tests() -> set[str]:
    names = {p.stem for p in TESTS.glob("test_*.py")}
    for path in TESTS.glob("*.py"):
        names |= set(re.findall(r"^\s*(?:async\s+)?def (test_\w+)", path.read_text(), re.M))
    return names


def test_every_test_the_threat_model_names_exists() -> None:
    text = (REPO / "docs" / "security.md").read_text()
    named = set(re.findall(r"\btest_\w+", text))
    assert len(named) > 20  # the page names its proofs; an empty parse would prove nothing
    defined = _defined_tests()
    # a name ending in '_' is written as a prefix in the text ("..._by_the_hosting_gateway` and `_by_the_connector")
    missing = sorted(n for n in named if n not in defined and not any(d.startswith(n) for d in defined))
    assert not missing, f"docs/security.md names tests that do not exist: {missing}"
