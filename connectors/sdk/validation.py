"""connexion request validators that name the offending field, as protocol §6 demands of every 400.

connexion's own validators say what is wrong but not which field; these subclasses raise lienthong's Problem with
`field` set (the parameter name, or a dotted path into the JSON body) and a short message.
"""

from __future__ import annotations

import copy
import json
from collections.abc import AsyncGenerator
from typing import Any

from connexion.datastructures import MediaTypeDict
from connexion.utils import is_null, is_nullable
from connexion.validators import JSONRequestBodyValidator, ParameterValidator
from jsonschema import Draft4Validator, ValidationError
from starlette.types import Scope

from lienthong.problem import bad_request

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
