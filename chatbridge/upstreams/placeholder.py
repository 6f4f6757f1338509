"""A placeholder JSON value that matches a JSON schema, for the echo model's JSON mode.

Rules (JSON Schema 2020-12 as OpenAI's structured outputs and Gemini's responseJsonSchema
take it, and Gemini's OpenAPI-style responseSchema with upper-case types):
- An object gets its `required` properties, each filled in turn; other properties are left
  out. additionalProperties and patternProperties add nothing.
- `const` and the first of `enum` win; `anyOf`, `oneOf` and a list of types take their first
  choice that is not null; `allOf` merges its parts; `$ref` follows `#/$defs/...` and
  `#/definitions/...` within the schema (a cycle ends in null).
- A string is the given text, cut to maxLength and padded to minLength, or a fixed value for
  a known `format` (date-time, date, time, email, uri, uuid); a number or integer is its
  minimum (or exclusiveMinimum + 1, else 0); an array holds minItems items (at least 0); a
  boolean is false.
- The whole value is bounded: at most MAX_VALUES values and MAX_CHARS characters besides the
  request's own text once (a schema of nested arrays, or of many required strings, each
  carrying the text, asked for an answer of 100^16 values or 500 MB; found by trying). Past
  the bound, values come out as null and strings short, no longer matching the schema.
"""

import json
from dataclasses import dataclass
from typing import Any

FORMATS = {"date-time": "1970-01-01T00:00:00Z", "date": "1970-01-01", "time": "00:00:00Z",
           "email": "echo@example.com", "uri": "https://example.com/", "url": "https://example.com/",
           "uuid": "00000000-0000-0000-0000-000000000000", "hostname": "example.com",
           "ipv4": "127.0.0.1", "ipv6": "::1"}
MAX_DEPTH = 32  # a schema nested deeper (or a $ref cycle) ends in null
MAX_VALUES = 10_000  # values in one placeholder
MAX_CHARS = 1_000_000  # characters of its strings, besides the text once


@dataclass
class Budget:
    """What is left of a placeholder's bounds (MAX_VALUES, MAX_CHARS)."""

    values: int
    chars: int


def placeholder(schema: Any, text: str = "", root: Any = None, depth: int = 0,
                budget: Budget | None = None) -> Any:
    """A value that schema accepts; strings carry text. Bounded in size (see the module)."""
    root = schema if root is None else root
    budget = Budget(MAX_VALUES, MAX_CHARS + len(text)) if budget is None else budget
    if not isinstance(schema, dict) or depth > MAX_DEPTH or budget.values <= 0:
        return None
    budget.values -= 1
    if "$ref" in schema:
        return placeholder(resolve_ref(root, schema["$ref"]), text, root, depth + 1, budget)
    if "const" in schema:
        return charged(schema["const"], budget)
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return charged(schema["enum"][0], budget)
    for key in ("anyOf", "oneOf"):
        if isinstance(schema.get(key), list) and schema[key]:
            choices = [c for c in schema[key] if not is_null(c)] or schema[key]
            return placeholder(choices[0], text, root, depth + 1, budget)
    if isinstance(schema.get("allOf"), list):
        merged = {k: v for k, v in schema.items() if k != "allOf"}
        for part in (p for p in schema["allOf"] if isinstance(p, dict)):
            merged = merge(merged, part)
        return placeholder(merged, text, root, depth + 1, budget)
    return typed_placeholder(schema, schema_type(schema), text, root, depth, budget)


def typed_placeholder(schema: dict, kind: str, text: str, root: Any, depth: int,
                      budget: Budget) -> Any:
    """A placeholder of one JSON type."""
    if kind == "object":
        properties = schema.get("properties") if isinstance(schema.get("properties"), dict) else {}
        required = schema.get("required") if isinstance(schema.get("required"), list) else []
        return {name: placeholder(properties.get(name, {}), text, root, depth + 1, budget)
                for name in required if isinstance(name, str)}
    if kind == "array":
        items = schema.get("items") if isinstance(schema.get("items"), dict) else {}
        count = schema.get("minItems") if isinstance(schema.get("minItems"), int) else 0
        return [placeholder(items, text, root, depth + 1, budget)
                for _ in range(min(count, 100, max(budget.values, 0)))]
    if kind in ("number", "integer"):
        return number(schema, kind)
    if kind == "boolean":
        return False
    if kind == "null":
        return None
    value = string(schema, text)[:max(budget.chars, 0)]
    budget.chars -= len(value)
    return value


def charged(value: Any, budget: Budget) -> Any:
    """A schema's own value (const, enum), its characters taken from the budget; null when
    they do not fit, since a value repeated in every item of arrays multiplies."""
    size = len(value) if isinstance(value, str) else \
        len(json.dumps(value)) if isinstance(value, (dict, list)) and budget.chars > 0 else 0
    if size > budget.chars:
        return None
    budget.chars -= size
    return value


def schema_type(schema: dict) -> str:
    """The schema's JSON type in lower case; the first that is not null of a list; guessed from
    its keywords when it names none."""
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if str(k).lower() != "null"), kind[0] if kind else None)
    if isinstance(kind, str):
        return kind.lower()
    if "properties" in schema or "required" in schema:
        return "object"
    return "array" if "items" in schema else "string"


def string(schema: dict, text: str) -> str:
    """text fitted to minLength and maxLength, or a value of the schema's format."""
    if schema.get("format") in FORMATS:
        return FORMATS[schema["format"]]
    value = text
    if isinstance(schema.get("maxLength"), int):
        value = value[:max(0, schema["maxLength"])]
    if isinstance(schema.get("minLength"), int) and len(value) < schema["minLength"]:
        value += "x" * (min(schema["minLength"], 10_000) - len(value))
    return value


def number(schema: dict, kind: str) -> int | float:
    """The smallest value the schema allows, or 0."""
    value = 0
    if isinstance(schema.get("minimum"), (int, float)):
        value = schema["minimum"]
    elif isinstance(schema.get("exclusiveMinimum"), (int, float)):
        value = schema["exclusiveMinimum"] + 1
    elif isinstance(schema.get("maximum"), (int, float)) and schema["maximum"] < 0:
        value = schema["maximum"]
    if kind == "integer":
        value = int(value) if value == int(value) else int(value) + 1
    return value


def is_null(schema: Any) -> bool:
    return isinstance(schema, dict) and str(schema.get("type", "")).lower() == "null"


def merge(base: dict, part: dict) -> dict:
    """Two schemas of allOf as one: their properties and required lists joined."""
    merged = {**base, **{k: v for k, v in part.items() if k not in ("properties", "required")}}
    merged["properties"] = {**(base.get("properties") or {}), **(part.get("properties") or {})}
    merged["required"] = list(dict.fromkeys((base.get("required") or []) + (part.get("required") or [])))
    return merged


def resolve_ref(root: Any, ref: Any) -> Any:
    """The schema a local `#/...` reference points to, or None."""
    if not isinstance(ref, str) or not ref.startswith("#"):
        return None
    node = root
    for name in (p for p in ref[1:].split("/") if p):
        name = name.replace("~1", "/").replace("~0", "~")
        node = node.get(name) if isinstance(node, dict) else None
    return node
