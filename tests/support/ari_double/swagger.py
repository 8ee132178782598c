"""The ARI contract: Asterisk 22's Swagger 1.1 files, and Asterisk's router.

Every request the double answers is first matched against these files, so a
double that accepts something real Asterisk would not is impossible by
construction. Routing mirrors ``ast_ari_invoke`` in res_ari.c:

* the path after ``/ari/`` is split on ``/`` and stops at the first empty
  segment; each segment is URI-decoded;
* a literal child wins over a ``{wildcard}`` child (so ``POST
  /channels/externalMedia`` is externalMedia, and ``GET
  /channels/externalMedia`` is a 405, not "get channel externalMedia");
* no child -> 404 ``Resource not found``; a node without the method -> 405
  ``Invalid method`` with an ``Allow`` header.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import unquote_plus

from .paths import api_docs_dir

#: The methods Asterisk's HTTP server knows (anything else is a 501 before ARI).
KNOWN_METHODS = ("GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS")


@dataclass(frozen=True)
class Param:
    """One Swagger parameter of an operation."""

    name: str
    param_type: str
    data_type: str
    required: bool
    allow_multiple: bool
    allowed_values: tuple[str, ...] | None
    range_min: int | None
    range_max: int | None

    @property
    def c_name(self) -> str:
        """The C field name Asterisk derives (``appArgs`` -> ``app_args``), used in errors."""
        out = []
        for char in self.name:
            if char.isupper():
                out.append("_" + char.lower())
            else:
                out.append(char)
        return "".join(out)


@dataclass(frozen=True)
class Operation:
    """One Swagger operation (resource file + nickname is unique)."""

    resource: str
    nickname: str
    method: str
    path: str
    params: tuple[Param, ...]
    websocket_protocol: str | None

    @property
    def key(self) -> str:
        """Unique handler key, e.g. ``channels.answer``."""
        return f"{self.resource}.{self.nickname}"

    @property
    def is_websocket(self) -> bool:
        return self.websocket_protocol is not None

    def params_of(self, param_type: str) -> tuple[Param, ...]:
        return tuple(p for p in self.params if p.param_type == param_type)

    def param(self, name: str) -> Param | None:
        return next((p for p in self.params if p.name == name), None)


@dataclass
class RouteNode:
    """A node of Asterisk's path-segment tree."""

    segment: str
    is_wildcard: bool
    children: list[RouteNode] = field(default_factory=list)
    operations: dict[str, Operation] = field(default_factory=dict)

    def child(self, segment: str) -> RouteNode:
        """The child for a Swagger path segment (``{name}`` is a wildcard), created once."""
        is_wildcard = segment.startswith("{") and segment.endswith("}")
        name = segment[1:-1] if is_wildcard else segment
        for existing in self.children:
            if existing.segment == name and existing.is_wildcard == is_wildcard:
                return existing
        node = RouteNode(name, is_wildcard)
        self.children.append(node)
        return node

    def allow_header(self) -> str:
        """The ``Allow`` value Asterisk's ``add_allow_header`` writes."""
        return ",".join(["OPTIONS", *[m for m in KNOWN_METHODS if m in self.operations]])


@dataclass(frozen=True)
class RouteMatch:
    """A resolved path: the node and the captured ``{pathVars}``."""

    node: RouteNode
    path_vars: dict[str, str]


def _parse_param(raw: dict[str, Any]) -> Param:
    allowable = raw.get("allowableValues") or {}
    values = allowable.get("values") if allowable.get("valueType") == "LIST" else None
    return Param(
        name=raw["name"],
        param_type=raw["paramType"],
        data_type=raw.get("dataType", "string"),
        required=bool(raw.get("required")),
        allow_multiple=bool(raw.get("allowMultiple")),
        allowed_values=tuple(values) if values is not None else None,
        range_min=allowable.get("min") if allowable.get("valueType") == "RANGE" else None,
        range_max=allowable.get("max") if allowable.get("valueType") == "RANGE" else None,
    )


def _parse_resource(path: Path) -> list[Operation]:
    document = json.loads(path.read_text())
    operations = []
    for api in document.get("apis", []):
        for raw in api.get("operations", []):
            operations.append(
                Operation(
                    resource=path.stem,
                    nickname=raw["nickname"],
                    method=raw["httpMethod"].upper(),
                    path=api["path"],
                    params=tuple(_parse_param(p) for p in raw.get("parameters", [])),
                    websocket_protocol=raw.get("websocketProtocol")
                    if raw.get("upgrade") == "websocket"
                    else None,
                )
            )
    return operations


class SwaggerSpec:
    """All operations of the ARI Swagger files, with Asterisk's router."""

    def __init__(self, operations: list[Operation], docs_dir: Path) -> None:
        self.operations = operations
        self.docs_dir = docs_dir
        self.root = RouteNode("ari", False)
        for operation in operations:
            node = self.root
            for segment in operation.path.strip("/").split("/"):
                node = node.child(segment)
            node.operations[operation.method] = operation

    @classmethod
    def load(cls, directory: Path | None = None) -> SwaggerSpec:
        """Load every resource file listed next to ``resources.json``."""
        docs = directory or api_docs_dir()
        if not (docs / "resources.json").is_file():
            raise FileNotFoundError(f"ARI Swagger files not found in {docs}; set VAGENT_SHARED_DIR")
        operations: list[Operation] = []
        for path in sorted(docs.glob("*.json")):
            if path.name != "resources.json":
                operations.extend(_parse_resource(path))
        return cls(operations, docs)

    def operation(self, key: str) -> Operation:
        """Look an operation up by ``resource.nickname``."""
        for operation in self.operations:
            if operation.key == key:
                return operation
        raise KeyError(key)

    def resolve(self, raw_path: str) -> RouteMatch | None:
        """Match the raw (still percent-encoded) path after ``/ari/``; None = 404."""
        node = self.root
        path_vars: dict[str, str] = {}
        for raw_segment in raw_path.split("/"):
            if not raw_segment:
                break
            segment = unquote_plus(raw_segment)
            literal = next(
                (c for c in node.children if not c.is_wildcard and c.segment == segment), None
            )
            wildcard = next((c for c in node.children if c.is_wildcard), None)
            if literal is not None:
                node = literal
            elif wildcard is not None:
                path_vars[wildcard.segment] = segment
                node = wildcard
            else:
                return None
        return RouteMatch(node, path_vars)


@cache
def default_spec() -> SwaggerSpec:
    """The spec from the shared directory, parsed once per process."""
    return SwaggerSpec.load()
