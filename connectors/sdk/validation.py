"""Checks of a connector: at start, that it can serve at all (check_connector); per request, connexion validators
that name the offending field, as protocol §6 demands of every 400.

check_connector runs when the app is built, before anything listens: an invalid OpenAPI document, an operationId
without a handler, and a handler (a public function of the handlers module) that no operationId names are all
reported together in one ConnectorUnusable. connexion would otherwise find them only at the first gateway call, while
/healthz answered 200. The document is checked against the OpenAPI 3.0 schema connexion itself validates with.

connexion's own request validators say what is wrong but not which field; the subclasses below raise lienthong's
Problem with `field` set (the parameter name, or a dotted path into the JSON body) and a short message.
"""

from __future__ import annotations

import copy
import importlib
import inspect
import json
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

import yaml
from connexion.datastructures import MediaTypeDict
from connexion.spec import OpenAPISpecification, create_spec_validator
from connexion.utils import is_null, is_nullable
from connexion.validators import JSONRequestBodyValidator, ParameterValidator
from jsonschema import Draft4Validator, ValidationError
from starlette.types import Scope

from connectors.sdk.definition import ConnectorDefinition
from lienthong.problem import bad_request

_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")

_FORMATS = Draft4Validator.FORMAT_CHECKER
# id(parameter definition) -> (the definition, its validator). connexion builds a parameter validator per request;
# building the jsonschema validator (and copying its schema) each time cost more than the validation itself. The
# entry holds the definition, so its id cannot be reused while cached; definitions live as long as the app.
_PARAM_VALIDATORS: dict[int, tuple[dict[str, Any], Draft4Validator]] = {}


def _param_validator(param: dict[str, Any]) -> Draft4Validator:
    cached = _PARAM_VALIDATORS.get(id(param))
    if cached is not None and cached[0] is param:
        return cached[1]
    validator = Draft4Validator(copy.deepcopy(param.get("schema", param)), format_checker=_FORMATS)
    if len(_PARAM_VALIDATORS) >= 4096:  # apps built and dropped (tests) must not pile their definitions up here
        _PARAM_VALIDATORS.clear()
    _PARAM_VALIDATORS[id(param)] = (param, validator)
    return validator


def body_field(exc: ValidationError) -> str:
    """A dotted path to the failing part of the body: `ids[3]`, `child.full_name`; `body` for the whole."""
    parts: list[Any] = list(exc.absolute_path)
    if exc.validator == "required" and isinstance(exc.instance, dict):
        missing = [r for r in exc.validator_value if r not in exc.instance]
        if missing:
            parts.append(missing[0])
    elif exc.validator == "additionalProperties" and isinstance(exc.instance, dict):
        allowed = set(exc.schema.get("properties", {}))
        extra = [k for k in exc.instance if k not in allowed]
        if extra:
            parts.append(extra[0])
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "body"


class NamingParameterValidator(ParameterValidator):
    def validate_request(self, request: Any) -> None:
        if self.strict_validation:
            extra = self.validate_query_parameter_list(request, security_params=self.security_query_params)
            if extra:
                name = sorted(extra)[0]
                raise bad_request(name, f"unknown query parameter '{name}'")
        for where, get in (
            ("query", lambda p: request.query_params.get(p["name"])),
            ("path", lambda p: request.path_params.get(p["name"].replace("-", "_"))),
            ("header", lambda p: request.headers.get(p["name"])),
        ):
            for param in self.parameters.get(where, []):
                self._check(where, get(param), param)

    @staticmethod
    def _check(where: str, value: Any, param: dict[str, Any]) -> None:
        name = param["name"]
        if value is None:
            if param.get("required"):
                raise bad_request(name, f"the {where} parameter '{name}' is required")
            return
        if is_nullable(param) and is_null(value):
            return
        try:
            _param_validator(param).validate(value)
        except ValidationError as exc:
            raise bad_request(name, f"{where} parameter '{name}': {exc.message}") from None


class NamingJSONBodyValidator(JSONRequestBodyValidator):
    async def _parse(self, stream: AsyncGenerator[bytes, None], scope: Scope) -> Any:
        raw = b"".join([chunk async for chunk in stream])
        try:
            text = raw.decode(self._encoding)
        except (UnicodeDecodeError, LookupError):
            raise bad_request("body", "the request body is not valid UTF-8", "invalid-body") from None
        if not text:
            return None
        try:
            return json.loads(text)
        except (json.JSONDecodeError, RecursionError) as exc:
            raise bad_request("body", f"the request body is not valid JSON: {exc}", "invalid-body") from None

    def _validate(self, body: Any) -> dict[Any, Any] | None:
        if not self._nullable and body is None:
            raise bad_request("body", "a JSON request body is required", "invalid-body")
        try:
            self._validator.validate(body)
        except ValidationError as exc:
            field = body_field(exc)
            raise bad_request(field, f"{field}: {exc.message}", "invalid-body") from None
        return None


VALIDATOR_MAP: dict[str, Any] = {
    "parameter": NamingParameterValidator,
    "body": MediaTypeDict({"*/*json": NamingJSONBodyValidator}),
}


class ConnectorUnusable(Exception):
    """The connector cannot serve; `problems` names each missing or broken piece."""

    def __init__(self, name: str, problems: list[str]) -> None:
        self.problems = problems
        super().__init__(f"connector {name} cannot start:\n" + "\n".join(f"  - {p}" for p in problems))


def check_connector(definition: ConnectorDefinition) -> dict[str, Any]:
    """The connector's OpenAPI document, once it and the handlers module agree; ConnectorUnusable otherwise."""
    problems: list[str] = []
    spec = _load(definition.spec_path, problems)
    operations = _operations(spec, definition.spec_path.name, problems) if spec is not None else None
    _check_handlers(definition.handlers, operations, definition.spec_path.name, problems)
    if problems or spec is None:
        raise ConnectorUnusable(definition.name, problems)
    return spec


def _load(path: Path, problems: list[str]) -> dict[str, Any] | None:
    try:
        doc = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        problems.append(f"cannot read the OpenAPI document {path}: {exc.strerror or exc}")
        return None
    except yaml.YAMLError as exc:
        problems.append(f"{path} is not valid YAML or JSON: {exc}")
        return None
    if not isinstance(doc, dict) or not str(doc.get("openapi", "")).startswith("3."):
        problems.append(f"{path} is not an OpenAPI 3 document (no `openapi: 3.x` at its top)")
        return None
    validator = create_spec_validator(doc)(OpenAPISpecification.openapi_schema)
    for error in sorted(validator.iter_errors(doc), key=lambda e: [str(p) for p in e.absolute_path]):
        where = "/".join(str(p) for p in error.absolute_path) or "(top level)"
        message = error.message if len(error.message) <= 200 else error.message[:200] + "..."
        problems.append(f"invalid OpenAPI document {path.name}: at {where}: {message}")
    return doc


def _operations(spec: dict[str, Any], spec_name: str, problems: list[str]) -> dict[str, str]:
    """operationId -> "METHOD /path"; operations without one, or sharing one, are problems."""
    found: dict[str, str] = {}
    paths = spec.get("paths")
    for path, item in (paths if isinstance(paths, dict) else {}).items():
        for method, op in (item if isinstance(item, dict) else {}).items():
            if method not in _METHODS or not isinstance(op, dict):
                continue
            where = f"{method.upper()} {path}"
            op_id = op.get("operationId")
            if not isinstance(op_id, str) or not op_id:
                problems.append(f"{where} in {spec_name} has no operationId: name the handler that serves it")
            elif op_id in found:
                problems.append(f"operationId {op_id} names both {found[op_id]} and {where} in {spec_name}")
            else:
                found[op_id] = where
    return found


def _check_handlers(module_name: str, operations: dict[str, str] | None, spec_name: str, problems: list[str]) -> None:
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # the import's own error is the reason
        problems.append(f"cannot import the handlers module {module_name}: {type(exc).__name__}: {exc}")
        return
    if operations is None:  # no usable document to compare with
        return
    for op_id, where in operations.items():
        handler = getattr(module, op_id, None)
        if handler is None:
            problems.append(f"operationId {op_id} ({where}) has no handler: define {op_id}() in {module_name}")
        elif not callable(handler):
            problems.append(f"{module_name}.{op_id} ({where}) is a {type(handler).__name__}, not a function")
        elif inspect.iscoroutinefunction(handler):
            problems.append(f"{module_name}.{op_id} is async: handlers are plain functions (run in the thread pool)")
    for name, value in vars(module).items():
        if (
            inspect.isfunction(value)
            and value.__module__ == module.__name__
            and not name.startswith("_")
            and name not in operations
        ):
            problems.append(
                f"handler {module_name}.{name} has no operationId in {spec_name}: name it in an operation, or make "
                f"it private (_{name}) if it is a helper"
            )
