"""`helm template` for this chart where no helm binary exists: a small Go text/template interpreter in Python.

It knows the subset of Go templates and of helm's (sprig's) functions that helm/lienthong uses: actions with trim
markers and comments, if / else if / else, range (with $item or $key, $value), with, define / include, variables,
pipelines, parentheses, and the functions in FUNCS. Values are merged as helm merges them (maps deep, lists and scalars
replaced). A template that uses anything else fails loudly (RenderError) rather than rendering wrong.

    python helm/render.py [-f VALUES.yaml]... [--release NAME] [--namespace NS] > manifests.yaml

tests/test_helm_chart.py renders both profiles with it and checks the result with kubectl and the Kubernetes schemas.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

CHART = Path(__file__).resolve().parent / "lienthong"
_TOKEN = re.compile(r'\s*("(?:[^"\\]|\\.)*"|`[^`]*`|\(|\)|\||:?=|,|\$?[\w.]*[\w$]|\.|-?\d+(?:\.\d+)?)')


class RenderError(Exception):
    pass


class Fail(RenderError):
    """A template's `fail` or `required`: the install is refused with this message."""


@dataclass
class Node:
    kind: str  # text, action, if, range, with, define
    arg: str = ""
    body: list[Node] = field(default_factory=list)
    orelse: list[Node] = field(default_factory=list)


def _lex(text: str) -> list[tuple[str, str]]:
    """('text', s) and ('action', body) pieces, trim markers applied, comments dropped."""
    out: list[tuple[str, str]] = []
    pos = 0
    for m in re.finditer(r"\{\{(-\s)?(.*?)(\s-)?\}\}", text, re.S):
        chunk = text[pos : m.start()]
        if m.group(1):
            chunk = chunk.rstrip()
        out.append(("text", chunk))
        body = m.group(2).strip()
        if not body.startswith("/*"):
            out.append(("action", body))
        pos = m.end()
        if m.group(3):
            while pos < len(text) and text[pos] in " \t\r\n":
                pos += 1
    out.append(("text", text[pos:]))
    return out


def parse(text: str, defines: dict[str, list[Node]]) -> list[Node]:
    root: list[Node] = []
    stack: list[tuple[Node | None, list[Node]]] = [(None, root)]
    for kind, piece in _lex(text):
        target = stack[-1][1]
        if kind == "text":
            target.append(Node("text", piece))
            continue
        word, _, rest = piece.partition(" ")
        if word in ("if", "range", "with", "define"):
            node = Node(word, rest.strip())
            target.append(node)
            stack.append((node, node.body))
        elif word == "else":
            opener = stack[-1][0]
            if opener is None:
                raise RenderError("else outside a block")
            if rest.startswith("if "):  # else if: a nested if in the else branch, closed by the same end
                inner = Node("if", rest[3:].strip())
                opener.orelse.append(inner)
                inner.kind = "elif"
                stack[-1] = (inner, inner.body)
            else:
                stack[-1] = (opener, opener.orelse)
        elif word == "end":
            opener = stack.pop()[0]  # an else-if chain shares one frame, so one end closes it
            if opener is not None and opener.kind == "elif":
                opener.kind = "if"
            if opener is None:
                raise RenderError("end without a block")
            if opener.kind == "define":
                defines[json.loads(opener.arg)] = opener.body
        else:
            target.append(Node("action", piece))
    if len(stack) != 1:
        raise RenderError("a block is never closed")
    return [n for n in root if n.kind != "define"]


def truthy(value: Any) -> bool:
    return value not in (None, False, 0, "") and not (isinstance(value, (list, dict)) and not value)


def _text(value: Any) -> str:
    if value is None:
        return ""
    if value is True or value is False:
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e21:
        return str(int(value))
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)


def _printf(fmt: str, *args: Any) -> str:
    values = iter(args)
    return re.sub(r"%[svdq%]", lambda m: "%" if m.group() == "%%" else _text(next(values)), fmt)


def _to_yaml(value: Any) -> str:
    return (
        "" if value in (None, {}, []) else yaml.safe_dump(value, default_flow_style=False, allow_unicode=True).rstrip()
    )


def _required(message: str, value: Any) -> Any:
    if not truthy(value):
        raise Fail(message)
    return value


def _fail(message: str) -> str:
    raise Fail(message)


def _index(value: Any, keys: tuple[Any, ...]) -> Any:
    for key in keys:
        value = value.get(key) if isinstance(value, dict) else value[key]
    return value


def _indent(n: int, text: str) -> str:
    return "\n".join(" " * n + line for line in str(text).split("\n"))


FUNCS: dict[str, Callable[..., Any]] = {
    "quote": lambda *v: " ".join(json.dumps(_text(x), ensure_ascii=False) for x in v),
    "squote": lambda v: "'" + _text(v) + "'",
    "default": lambda d, v=None: v if truthy(v) else d,
    "trunc": lambda n, s: s[:n],
    "trimSuffix": lambda suffix, s: s[: -len(suffix)] if suffix and s.endswith(suffix) else s,
    "trimPrefix": lambda prefix, s: s[len(prefix) :] if s.startswith(prefix) else s,
    "contains": lambda sub, s: sub in s,
    "hasPrefix": lambda prefix, s: s.startswith(prefix),
    "replace": lambda old, new, s: s.replace(old, new),
    "join": lambda sep, items: sep.join(_text(i) for i in items),
    "printf": _printf,
    "required": _required,
    "fail": _fail,
    "not": lambda v: not truthy(v),
    "and": lambda *v: next((x for x in v if not truthy(x)), v[-1]),
    "or": lambda *v: next((x for x in v if truthy(x)), v[-1]),
    "eq": lambda a, *b: any(a == x for x in b),
    "ne": lambda a, b: a != b,
    "gt": lambda a, b: a > b,
    "int": lambda v: int(v),
    "int64": lambda v: int(v),
    "toYaml": _to_yaml,
    "toJson": lambda v: json.dumps(v, separators=(",", ":")),
    "indent": _indent,
    "nindent": lambda n, text: "\n" + _indent(n, text),
    "list": lambda *v: list(v),
    "index": lambda v, *keys: _index(v, keys),
    "empty": lambda v: not truthy(v),
    "lower": lambda s: s.lower(),
    "ternary": lambda a, b, cond: a if truthy(cond) else b,
}


class Renderer:
    def __init__(self, chart: Path, values: dict[str, Any], release: str, namespace: str) -> None:
        self.chart = chart
        self.defines: dict[str, list[Node]] = {}
        meta = yaml.safe_load((chart / "Chart.yaml").read_text())
        files = _Files(chart)
        self.root = {
            "Values": values, "Files": files, "Capabilities": {},
            "Release": {"Name": release, "Namespace": namespace, "Service": "Helm", "IsInstall": True},
            "Chart": {"Name": meta["name"], "Version": meta["version"], "AppVersion": meta.get("appVersion", "")},
        }  # fmt: skip
        self.templates: dict[str, list[Node]] = {}
        for path in sorted((chart / "templates").iterdir()):
            if path.suffix in (".yaml", ".tpl", ".txt"):
                self.templates[path.name] = parse(path.read_text(), self.defines)

    def render(self, name: str) -> str:
        return self._run(self.templates[name], self.root, {"$": self.root})

    def _run(self, nodes: list[Node], dot: Any, scope: dict[str, Any]) -> str:
        out = []
        for node in nodes:
            if node.kind == "text":
                out.append(node.arg)
            elif node.kind == "action":
                assign = re.match(r"^\$(\w+)\s*:?=\s*(.*)$", node.arg, re.S)
                if assign:
                    scope[assign.group(1)] = self._eval(assign.group(2), dot, scope)
                else:
                    out.append(_text(self._eval(node.arg, dot, scope)))
            elif node.kind == "if":
                branch = node.body if truthy(self._eval(node.arg, dot, scope)) else node.orelse
                out.append(self._run(branch, dot, scope))
            elif node.kind == "with":
                value = self._eval(node.arg, dot, scope)
                out.append(self._run(node.body, value, scope) if truthy(value) else self._run(node.orelse, dot, scope))
            elif node.kind == "range":
                out.append(self._range(node, dot, scope))
        return "".join(out)

    def _range(self, node: Node, dot: Any, scope: dict[str, Any]) -> str:
        m = re.match(r"^(?:\$(\w+)\s*(?:,\s*\$(\w+)\s*)?:=\s*)?(.*)$", node.arg, re.S)
        assert m is not None
        items = self._eval(m.group(3), dot, scope)
        pairs = sorted(items.items()) if isinstance(items, dict) else list(enumerate(items or []))
        if not pairs:
            return self._run(node.orelse, dot, scope)
        out = []
        for key, item in pairs:
            inner = dict(scope)  # variables set inside the loop do not leak out, as in Go
            if m.group(2):
                inner[m.group(1)], inner[m.group(2)] = key, item
            elif m.group(1):
                inner[m.group(1)] = item
            out.append(self._run(node.body, item, inner))
        return "".join(out)

    def _eval(self, expr: str, dot: Any, scope: dict[str, Any]) -> Any:
        tokens, at = [], 0
        while expr[at:].strip():
            m = _TOKEN.match(expr, at)
            if m is None or not m.group(1):
                raise RenderError(f"cannot read {expr[at:]!r} in {expr!r}")
            tokens.append(m.group(1))
            at = m.end()
        value, pos = self._pipeline(tokens, 0, dot, scope)
        if pos != len(tokens):
            raise RenderError(f"unexpected {tokens[pos]!r} in {expr!r}")
        return value

    def _pipeline(self, tokens: list[str], pos: int, dot: Any, scope: dict[str, Any]) -> tuple[Any, int]:
        value, pos = self._command(tokens, pos, dot, scope, None)
        while pos < len(tokens) and tokens[pos] == "|":
            value, pos = self._command(tokens, pos + 1, dot, scope, [value])
        return value, pos

    def _command(
        self, tokens: list[str], pos: int, dot: Any, scope: dict[str, Any], piped: list[Any] | None
    ) -> tuple[Any, int]:
        head = tokens[pos]
        pos += 1
        if head == "(":
            value, pos = self._pipeline(tokens, pos, dot, scope)
            return value, pos + 1  # past the closing parenthesis
        args: list[Any] = []
        while pos < len(tokens) and tokens[pos] not in ("|", ")"):
            if tokens[pos] == "(":
                value, pos = self._pipeline(tokens, pos + 1, dot, scope)
                pos += 1  # past the closing parenthesis
            else:
                value, pos = self._operand(tokens[pos], dot, scope), pos + 1
            args.append(value)
        args += piped or []
        if head == "include":
            return self._include(args[0], args[1]), pos
        if head in FUNCS:
            return FUNCS[head](*args), pos
        value = self._operand(head, dot, scope)
        if callable(value):  # a method, such as .Files.Get
            return value(*args), pos
        if args:
            raise RenderError(f"{head} is not a function this renderer knows")
        return value, pos

    def _include(self, name: str, dot: Any) -> str:
        if name not in self.defines:
            raise RenderError(f"no template {name!r}")
        return self._run(self.defines[name], dot, {"$": self.root})

    def _operand(self, word: str, dot: Any, scope: dict[str, Any]) -> Any:
        if word[0] in '"`':
            return json.loads(word) if word[0] == '"' else word[1:-1]
        if re.fullmatch(r"-?\d+", word):
            return int(word)
        if re.fullmatch(r"-?\d+\.\d+", word):
            return float(word)
        if word in ("true", "false", "nil"):
            return {"true": True, "false": False, "nil": None}[word]
        if word == ".":
            return dot
        if word.startswith("$"):
            name, _, path = word[1:].partition(".")
            if (name or "$") not in scope:
                raise RenderError(f"undefined variable ${name}")
            return _field(scope[name or "$"], path)
        if word.startswith("."):
            return _field(dot, word[1:])
        raise RenderError(f"unknown word {word!r}")


class _Files:
    def __init__(self, chart: Path) -> None:
        self.chart = chart

    def Get(self, name: str) -> str:  # helm's name for it
        return (self.chart / name).read_text()


def _field(value: Any, path: str) -> Any:
    for key in [k for k in path.split(".") if k]:
        if isinstance(value, dict):
            value = value.get(key)
        elif value is None:
            return None  # helm's missingkey=zero: a missing map key reads as empty, its fields too
        else:
            value = getattr(value, key)
    return value


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """helm's values merge: maps deep, anything else (lists too) replaced; null deletes a key."""
    out = dict(base)
    for key, value in override.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def values_for(value_files: list[Path], chart: Path = CHART) -> dict[str, Any]:
    values: dict[str, Any] = yaml.safe_load((chart / "values.yaml").read_text())
    for path in value_files:
        values = merge(values, yaml.safe_load(path.read_text()) or {})
    return values


def render(
    values: dict[str, Any], release: str = "lienthong", namespace: str = "lienthong", chart: Path = CHART
) -> dict[str, str]:
    """Each template's output by file name, partials (_*.tpl) and NOTES.txt left out, as `helm template` gives."""
    renderer = Renderer(chart, values, release, namespace)
    return {n: renderer.render(n) for n in renderer.templates if not n.startswith("_") and n.endswith(".yaml")}


def notes(values: dict[str, Any], release: str = "lienthong", namespace: str = "lienthong", chart: Path = CHART) -> str:
    return Renderer(chart, values, release, namespace).render("NOTES.txt")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-f", "--values", action="append", type=Path, default=[], help="a values file; repeatable")
    parser.add_argument("--release", default="lienthong")
    parser.add_argument("--namespace", default="lienthong")
    args = parser.parse_args(argv)
    try:
        out = render(values_for(args.values), args.release, args.namespace)
    except Fail as exc:
        print(f"Error: execution error: {exc}", file=sys.stderr)
        return 1
    for name, text in out.items():
        if text.strip():
            print(f"---\n# Source: lienthong/templates/{name}\n{text.strip()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
