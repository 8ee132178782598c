"""Request parameters: decoded exactly as Asterisk does, checked against Swagger.

Two separate questions, deliberately kept apart:

1. *What does Asterisk do with this request?* The generated ``ast_ari_*_cb``
   code (rest-api-templates/param_parsing.mustache) converts blindly: ``int``
   is ``atoi`` (``timeout=abc`` is 0), ``boolean`` is ``ast_true``, unknown
   names are ignored, a repeated name keeps the *last* value, ``allowMultiple``
   splits on commas with ``ast_app_separate_args``, and fields of a JSON body
   override query parameters of the same name. Missing required parameters
   are not rejected here at all: each handler has its own (uneven) checks.
   :func:`decode_arguments` reproduces this, so the wire behaviour is real.

2. *Is the request valid against the Swagger contract?* A request Asterisk
   silently tolerates is still a bug in the client. :func:`swagger_violations`
   lists every deviation (unknown parameter, bad type, value outside the
   allowed list, missing required parameter, a repeated parameter, a body
   that will be ignored) so tests can fail on them without the double ever
   answering differently from Asterisk.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from .swagger import Operation, Param

#: res_ari_*.c: ``#define MAX_VALS 128``.
MAX_VALS = 128
#: Query parameters ARI consumes before the generated code sees them.
GLOBAL_PARAMS = frozenset({"api_key"})
_INTEGER = re.compile(r"^[+-]?\d+$")
_ATOI = re.compile(r"^\s*([+-]?\d+)")
_TRUE_WORDS = frozenset({"yes", "true", "y", "t", "1", "on"})


class TooManyValues(Exception):
    """``allowMultiple`` list with >= MAX_VALS items: Asterisk answers 400."""

    def __init__(self, param: Param) -> None:
        super().__init__(f"Too many values for {param.c_name}")


@dataclass
class DecodedArgs:
    """The ``args`` struct a handler receives: absent keys are NULL/0 in C."""

    values: dict[str, Any] = field(default_factory=dict)
    path: dict[str, str] = field(default_factory=dict)
    body: Any = None

    def text(self, name: str) -> str | None:
        """A string parameter, None when NULL (absent or a non-string JSON field)."""
        value = self.values.get(name)
        return value if isinstance(value, str) else None

    def integer(self, name: str) -> int:
        """An int parameter; C's zero-initialised struct makes absent 0."""
        value = self.values.get(name)
        return value if isinstance(value, int) and not isinstance(value, bool) else 0

    def flag(self, name: str) -> bool:
        return self.values.get(name) is True

    def items(self, name: str) -> list[str]:
        """An ``allowMultiple`` parameter: [] when absent."""
        value = self.values.get(name)
        return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


def c_atoi(text: str) -> int:
    """C ``atoi``: leading blanks, optional sign, digits; anything else gives 0."""
    match = _ATOI.match(text)
    return int(match.group(1)) if match else 0


def c_true(text: str | None) -> bool:
    """Asterisk's ``ast_true``."""
    return bool(text) and text is not None and text.strip().lower() in _TRUE_WORDS


def separate_args(text: str, delimiter: str = ",") -> list[str]:
    """``ast_app_separate_args`` with remove_chars: honours (), [], quotes, escapes."""
    if text == "":
        return [""]
    out: list[str] = []
    current: list[str] = []
    paren = bracket = 0
    quote = False
    index = 0
    while index < len(text):
        char = text[index]
        if char == "(":
            paren += 1
        elif char == ")" and paren:
            paren -= 1
        elif char == "[":
            bracket += 1
        elif char == "]" and bracket:
            bracket -= 1
        elif char == '"':
            quote = not quote
            index += 1
            continue
        elif char == "\\":
            index += 1
            if index < len(text):
                current.append(text[index])
            index += 1
            continue
        elif char == delimiter and not (paren or quote or bracket):
            out.append("".join(current))
            current = []
            index += 1
            continue
        current.append(char)
        index += 1
    out.append("".join(current))
    return out


def _convert_text(param: Param, text: str) -> Any:
    if param.data_type in ("int", "long"):
        return c_atoi(text)
    if param.data_type == "boolean":
        return c_true(text)
    return text


def _convert_json(param: Param, value: Any) -> Any:
    if param.data_type in ("int", "long"):
        return value if isinstance(value, int) and not isinstance(value, bool) else 0
    if param.data_type == "boolean":
        return value is True
    return value if isinstance(value, str) else None


def _decode_query_value(param: Param, text: str) -> Any:
    if not param.allow_multiple:
        return _convert_text(param, text)
    items = separate_args(text)
    if len(items) >= MAX_VALS:
        raise TooManyValues(param)
    return [_convert_text(param, item) for item in items]


def _decode_body_value(param: Param, value: Any) -> Any:
    if not param.allow_multiple:
        return _convert_json(param, value)
    if isinstance(value, list):
        return [_convert_json(param, item) for item in value]
    return [_convert_json(param, value)]


def decode_arguments(
    operation: Operation,
    query: list[tuple[str, str]],
    body: Any,
    path_vars: dict[str, str],
) -> DecodedArgs:
    """Build the handler's args exactly like the generated callback would."""
    args = DecodedArgs(path=dict(path_vars), body=body)
    query_params = {p.name: p for p in operation.params_of("query")}
    for name, text in query:
        param = query_params.get(name)
        if param is not None:
            args.values[name] = _decode_query_value(param, text)
    if isinstance(body, dict):
        for name, param in query_params.items():
            if name in body:
                args.values[name] = _decode_body_value(param, body[name])
    for param in operation.params_of("body"):
        if body is not None:
            args.values[param.name] = body
    return args


# --- Swagger conformance -----------------------------------------------------------


def _value_problem(param: Param, text: str) -> str | None:
    if param.data_type in ("int", "long"):
        if not _INTEGER.match(text):
            return f"parameter '{param.name}' must be an {param.data_type}, got {text!r}"
        number = int(text)
        if param.range_min is not None and number < param.range_min:
            return f"parameter '{param.name}' must be >= {param.range_min}, got {number}"
        if param.range_max is not None and number > param.range_max:
            return f"parameter '{param.name}' must be <= {param.range_max}, got {number}"
    elif param.data_type == "boolean" and text.lower() not in ("true", "false"):
        return f"parameter '{param.name}' must be true or false, got {text!r}"
    if param.allowed_values is not None and text not in param.allowed_values:
        return f"parameter '{param.name}' must be one of {list(param.allowed_values)}, got {text!r}"
    return None


def _query_violations(operation: Operation, query: list[tuple[str, str]]) -> list[str]:
    problems: list[str] = []
    known = {p.name: p for p in operation.params_of("query")}
    counts: dict[str, int] = {}
    for name, text in query:
        counts[name] = counts.get(name, 0) + 1
        param = known.get(name)
        if param is None:
            if name not in GLOBAL_PARAMS:
                problems.append(f"unknown query parameter '{name}' (Asterisk ignores it)")
            continue
        items = separate_args(text) if param.allow_multiple else [text]
        problems.extend(p for p in (_value_problem(param, item) for item in items) if p)
    for name, count in counts.items():
        if count > 1 and name in known:
            problems.append(
                f"query parameter '{name}' given {count} times (Asterisk keeps only the last)"
            )
    return problems


def _json_type_ok(param: Param, value: Any) -> bool:
    if param.data_type in ("int", "long"):
        return isinstance(value, int) and not isinstance(value, bool)
    if param.data_type == "boolean":
        return isinstance(value, bool)
    return isinstance(value, str)


def _body_violations(operation: Operation, body: Any) -> list[str]:
    if body is None:
        return []
    body_params = operation.params_of("body")
    if not isinstance(body, dict):
        return [f"JSON body must be an object, got {type(body).__name__}"]
    problems: list[str] = []
    known = {p.name: p for p in operation.params_of("query")}
    for name, value in body.items():
        param = known.get(name)
        if param is None:
            if not any(b.name == name for b in body_params):
                problems.append(f"unknown body field '{name}' (Asterisk ignores it)")
            elif not isinstance(value, dict):
                problems.append(f"body field '{name}' must be an object")
            continue
        values = value if param.allow_multiple and isinstance(value, list) else [value]
        if not all(_json_type_ok(param, item) for item in values):
            problems.append(f"body field '{name}' must be a JSON {param.data_type}")
    return problems


def _required_violations(operation: Operation, args: DecodedArgs) -> list[str]:
    problems: list[str] = []
    for param in operation.params:
        if not param.required or param.param_type == "path":
            continue
        value = args.values.get(param.name)
        if value is None or value == "" or value == [""]:
            problems.append(f"missing required parameter '{param.name}'")
    return problems


def swagger_violations(
    operation: Operation,
    query: list[tuple[str, str]],
    body: Any,
    args: DecodedArgs,
    ignored_body: str | None = None,
) -> list[str]:
    """Every way this request departs from the Swagger operation."""
    problems = _query_violations(operation, query)
    problems.extend(_body_violations(operation, body))
    problems.extend(_required_violations(operation, args))
    if ignored_body:
        problems.append(ignored_body)
    return problems
