"""The error catalogue in docs/protocol.md §6 is exactly the set of (status, code) pairs the mesh's code can answer.

The code side is read from the source by an AST walk over the mesh's packages:
- every `Problem(<status>, "<code>", ...)` call with literal status and code;
- every call to a wrapper, a function that builds `Problem(...)` from its own parameters (`bad_request(field, detail,
  code="invalid-parameter")`, `_limit(413, "document-too-large", ...)`, ...): the literal arguments or defaults at the
  call site;
- every status table, a dict literal from HTTP statuses to codes (how framework errors are mapped), and the fallback
  code such a table's `.get(status, "<code>")` answers for any other status (the table's status "other").
A `Problem(...)` call whose status or code is neither a literal nor a wrapper parameter fails the test unless its
function is one of the few that map framework errors through a status table (DYNAMIC), so a new code cannot slip past.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("gateway", "policies", "lienthong", "registry", "connectors")
PROTOCOL = ROOT / "docs" / "protocol.md"
CODE = re.compile(r"^[a-z]+(?:-[a-z]+)*$")
OTHER = 0  # the status of a status table's fallback code: whatever status the framework raised
# Functions whose Problem(...) takes status and code from a status table in the same module (read by _tables)
DYNAMIC = frozenset(
    {
        ("lienthong/api_problems.py", "on_connexion_problem"),
        ("lienthong/api_problems.py", "on_http_exception"),
        ("connectors/sdk/errors.py", "_from_status"),
        ("gateway/xroad_errors.py", "problem_from_relay"),  # rebuilds a hosting gateway's refusal, raised elsewhere
    }
)

Pair = tuple[int, str]


@dataclass(frozen=True)
class Arg:
    """Where a wrapper's Problem(...) takes its status or code: a literal, or one of the wrapper's parameters."""

    literal: int | str | None = None
    index: int | None = None  # positional index at the call site (self/cls not counted)
    name: str | None = None
    default: int | str | None = None


def _modules() -> list[tuple[str, ast.Module]]:
    out = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            out.append((path.relative_to(ROOT).as_posix(), ast.parse(path.read_text(), str(path))))
    return out


def _callee(call: ast.Call) -> str | None:
    if isinstance(call.func, ast.Name):
        return call.func.id
    if isinstance(call.func, ast.Attribute):
        return call.func.attr
    return None


def _literal(node: ast.AST | None) -> int | str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, str)) and not isinstance(node.value, bool):
        return node.value
    return None


def _choices(node: ast.AST | None) -> list[int | str | None]:
    """A literal, or both literals of `a if cond else b` (nested too): every value the expression can take."""
    if isinstance(node, ast.IfExp):
        return [*_choices(node.body), *_choices(node.orelse)]
    return [_literal(node)]


def _pairs(statuses: list[int | str | None], codes: list[int | str | None]) -> set[Pair] | None:
    """Every (status, code) of these choices; None when any choice is not an int status or a str code."""
    if all(isinstance(s, int) for s in statuses) and all(isinstance(c, str) for c in codes):
        return {(int(s or 0), str(c)) for s in statuses for c in codes}
    return None


def _problem_arg(call: ast.Call, position: int, keyword: str) -> ast.AST | None:
    if len(call.args) > position:
        return call.args[position]
    return next((k.value for k in call.keywords if k.arg == keyword), None)


def _functions(tree: ast.Module) -> list[ast.FunctionDef | ast.AsyncFunctionDef]:
    return [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]


def _problem_calls(node: ast.AST) -> list[ast.Call]:
    return [n for n in ast.walk(node) if isinstance(n, ast.Call) and _callee(n) == "Problem"]


def _param_arg(fn: ast.FunctionDef | ast.AsyncFunctionDef, node: ast.AST | None) -> Arg | None:
    """The wrapper parameter `node` names, with its call-site position and default; None if it names none."""
    if not isinstance(node, ast.Name):
        return None
    params = [*fn.args.posonlyargs, *fn.args.args]
    defaults = dict(zip([p.arg for p in params][len(params) - len(fn.args.defaults) :], fn.args.defaults, strict=True))
    offset = 1 if params and params[0].arg in ("self", "cls") else 0
    for i, p in enumerate(params):
        if p.arg == node.id:
            return Arg(index=i - offset, name=p.arg, default=_literal(defaults.get(p.arg)))
    for p, d in zip(fn.args.kwonlyargs, fn.args.kw_defaults, strict=True):
        if p.arg == node.id:
            return Arg(name=p.arg, default=_literal(d))
    return None


def _wrappers(modules: list[tuple[str, ast.Module]]) -> dict[str, tuple[Arg, Arg]]:
    """Functions that pass one of their parameters to Problem(...) as status or code (the other may be literal)."""
    out: dict[str, tuple[Arg, Arg]] = {}
    for _path, tree in modules:
        for fn in _functions(tree):
            for call in _problem_calls(fn):
                status_node, code_node = _problem_arg(call, 0, "status"), _problem_arg(call, 1, "code")
                status = _param_arg(fn, status_node) or Arg(literal=_literal(status_node))
                code = _param_arg(fn, code_node) or Arg(literal=_literal(code_node))
                readable = all(a.name is not None or a.literal is not None for a in (status, code))
                if (status.name or code.name) and readable:
                    assert fn.name not in out or out[fn.name] == (status, code), f"two wrappers named {fn.name}"
                    out[fn.name] = (status, code)
    return out


def _at_call(call: ast.Call, arg: Arg) -> int | str | None:
    if arg.name is None:
        return arg.literal
    node = call.args[arg.index] if arg.index is not None and len(call.args) > arg.index else None
    node = node or next((k.value for k in call.keywords if k.arg == arg.name), None)
    return arg.default if node is None else _literal(node)


def _read_problem(call: ast.Call) -> set[Pair] | None:
    return _pairs(_choices(_problem_arg(call, 0, "status")), _choices(_problem_arg(call, 1, "code")))


def _tables(tree: ast.Module) -> set[Pair]:
    """Status tables ({400: "invalid-parameter", ...}) and the fallback code of their .get(status, "<code>")."""
    pairs: set[Pair] = set()
    table_names: set[str] = set()

    def is_table(node: ast.AST) -> bool:
        if isinstance(node, ast.Name):
            return node.id in table_names
        if not isinstance(node, ast.Dict) or not node.keys:
            return False
        keys, values = [_literal(k) for k in node.keys], [_literal(v) for v in node.values]
        return all(isinstance(k, int) and 400 <= k < 600 for k in keys) and all(
            isinstance(v, str) and CODE.match(v) for v in values
        )

    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and is_table(node.value):
            table_names.update(t.id for t in node.targets if isinstance(t, ast.Name))
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict) and is_table(node):
            for k, v in zip(node.keys, node.values, strict=True):
                pairs.add((int(_literal(k) or 0), str(_literal(v))))
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "get"
            and is_table(node.func.value)
            and len(node.args) == 2
        ):
            fallback = _literal(node.args[1])
            if isinstance(fallback, str):
                pairs.add((OTHER, fallback))
    return pairs


def codes_in_source(modules: list[tuple[str, ast.Module]] | None = None) -> tuple[set[Pair], list[str]]:
    """Every (status, code) the source can answer, and every Problem(...) or wrapper call that could not be read."""
    modules = _modules() if modules is None else modules
    wrappers = _wrappers(modules)
    pairs: set[Pair] = set()
    unread: list[str] = []
    for path, tree in modules:
        pairs |= _tables(tree)
        for fn in _functions(tree):
            wrapper = wrappers.get(fn.name)  # this function is one (its own Problem(...) reads its parameters)
            for call in ast.walk(fn):
                if not isinstance(call, ast.Call):
                    continue
                name = _callee(call)
                if name == "Problem":
                    read = _read_problem(call)
                    inside_wrapper = wrapper is not None and any(
                        _param_arg(fn, _problem_arg(call, i, k)) for i, k in ((0, "status"), (1, "code"))
                    )
                    if read is not None:
                        pairs |= read
                    elif not inside_wrapper and (path, fn.name) not in DYNAMIC:
                        unread.append(f"{path}:{call.lineno} Problem(...) in {fn.name}")
                elif name in wrappers:
                    status_arg, code_arg = wrappers[name]
                    read = _pairs([_at_call(call, status_arg)], [_at_call(call, code_arg)])
                    if read is not None:
                        pairs |= read
                    else:
                        unread.append(f"{path}:{call.lineno} {name}(...)")
        # Problem(...) at module level (outside any function) is read too
        for node in tree.body:
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                for call in _problem_calls(node):
                    read = _read_problem(call)
                    if read is not None:
                        pairs |= read
                    else:
                        unread.append(f"{path}:{call.lineno} Problem(...) at module level")
    return pairs, sorted(set(unread))


def codes_in_protocol() -> set[Pair]:
    """The (status, code) pairs of the table in docs/protocol.md §6; a status cell 'other' is OTHER."""
    text = PROTOCOL.read_text()
    section = text.split("\n## 6. Errors", 1)[1].split("\n## ", 1)[0]
    pairs: set[Pair] = set()
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not (cells[0].isdigit() or cells[0] == "other"):
            continue
        status = OTHER if cells[0] == "other" else int(cells[0])
        codes = re.findall(r"`([^`]+)`", cells[1])
        assert codes, f"§6 row without a code: {line}"
        pairs.update((status, c) for c in codes)
    return pairs


def _show(pairs: set[Pair]) -> list[str]:
    return [f"{'other' if s == OTHER else s} {c}" for s, c in sorted(pairs)]


def test_every_problem_call_is_readable() -> None:
    """A status or code this walk cannot read would be a code the catalogue cannot check: use literals or a wrapper."""
    _pairs, unread = codes_in_source()
    assert unread == []


def test_the_protocol_lists_exactly_the_codes_the_source_answers() -> None:
    source, _unread = codes_in_source()
    documented = codes_in_protocol()
    assert _show(source - documented) == [], "codes the mesh answers that docs/protocol.md §6 does not list"
    assert _show(documented - source) == [], "codes docs/protocol.md §6 lists that no code answers"


def test_the_walk_sees_wrappers_tables_and_multiline_calls() -> None:
    """The extractor itself: codes reachable only through a wrapper, a status table or a multi-line call are found."""
    source, _unread = codes_in_source()
    assert (400, "invalid-body") in source  # bad_request(..., "invalid-body")
    assert (422, "too-many-services") in source  # service_rules._limit(422, ...), split over lines
    assert (503, "circuit-open") in source  # Problem(\n 503,\n "circuit-open", ...)
    assert (415, "unsupported-media-type") in source  # a status table only
    assert (OTHER, "error") in source  # a status table's fallback


SYNTHETIC = """
def bad_request(field, detail, code="invalid-parameter"):
    return Problem(400, code, detail, field=field)

def limit(status, code, detail):
    return Problem(status, code, detail)

CODES = {451: "unavailable-for-legal-reasons"}

def handler(x):
    if x:
        raise bad_request("a", "b", code="brand-new")
    raise limit(
        507,
        "out-of-room",
        "d",
    )

def framework(status):
    return Problem(status, CODES.get(status, "fallback"), "d")

def sneaky(x):
    code = "hidden-one" if x else "hidden-two"
    raise Problem(400, code, "d")

def either(x):
    raise Problem(409, "first" if x else "second", "d")
"""


def test_the_walk_reads_new_codes_and_flags_what_it_cannot_read() -> None:
    """On a module written for the purpose: a wrapper's keyword and default, a multi-line wrapper call, a status
    table and its fallback, both sides of a conditional are read; a code in a local variable is flagged."""
    pairs, unread = codes_in_source([("x/new.py", ast.parse(SYNTHETIC))])
    assert pairs == {
        (400, "brand-new"),
        (507, "out-of-room"),
        (451, "unavailable-for-legal-reasons"),
        (OTHER, "fallback"),
        (409, "first"),
        (409, "second"),
    }
    assert [u.split(" ", 1)[1] for u in unread] == ["Problem(...) in framework", "Problem(...) in sneaky"]


def test_the_dynamic_allowlist_names_functions_that_exist() -> None:
    """A function left in DYNAMIC after it was renamed or removed would excuse nothing; keep the list true."""
    defined = {(path, fn.name) for path, tree in _modules() for fn in _functions(tree)}
    assert DYNAMIC <= defined
