"""A small JSON-Schema checker for the subset pydantic emits, so tests can hold responses to the OpenAPI document.

Supports $ref (to #/components/schemas), type (incl. lists), properties, required, additionalProperties, items,
anyOf/oneOf/allOf, enum, const, minimum/maximum, minLength/maxLength. Raises AssertionError with a JSON path.
"""

from __future__ import annotations

from typing import Any

_TYPES: dict[str, Any] = {
    "object": dict,
    "array": list,
    "string": str,
    "boolean": bool,
    "null": type(None),
}


def _is_type(value: Any, name: str) -> bool:
    if name == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if name == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    return isinstance(value, _TYPES[name])


def check(doc: dict[str, Any], schema: dict[str, Any], value: Any, path: str = "$") -> None:
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[1]
        check(doc, doc["components"]["schemas"][name], value, path)
        return
    for key in ("anyOf", "oneOf"):
        if key in schema:
            errors = []
            for sub in schema[key]:
                try:
                    check(doc, sub, value, path)
                    break
                except AssertionError as exc:
                    errors.append(str(exc))
            else:
                raise AssertionError(f"{path}: matches none of {key}: {errors}")
    for sub in schema.get("allOf", []):
        check(doc, sub, value, path)
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        assert any(_is_type(value, t) for t in types), f"{path}: {value!r} is not of type {types}"
    if "enum" in schema:
        assert value in schema["enum"], f"{path}: {value!r} not in {schema['enum']}"
    if "const" in schema:
        assert value == schema["const"], f"{path}: {value!r} != {schema['const']!r}"
    if isinstance(value, dict):
        props = schema.get("properties", {})
        for req in schema.get("required", []):
            assert req in value, f"{path}: missing required {req!r}"
        for k, v in value.items():
            if k in props:
                check(doc, props[k], v, f"{path}.{k}")
            elif isinstance(schema.get("additionalProperties"), dict):
                check(doc, schema["additionalProperties"], v, f"{path}.{k}")
            elif schema.get("additionalProperties") is False or (
                props and "additionalProperties" not in schema
            ):
                # pydantic models list every field: an undocumented key means the document is not true
                raise AssertionError(f"{path}: undocumented key {k!r}")
    if isinstance(value, list) and "items" in schema:
        for i, v in enumerate(value):
            check(doc, schema["items"], v, f"{path}[{i}]")
    if isinstance(value, int | float) and not isinstance(value, bool):
        if "minimum" in schema:
            assert value >= schema["minimum"], f"{path}: {value} < {schema['minimum']}"
        if "maximum" in schema:
            assert value <= schema["maximum"], f"{path}: {value} > {schema['maximum']}"
    if isinstance(value, str):
        if "minLength" in schema:
            assert len(value) >= schema["minLength"], f"{path}: shorter than {schema['minLength']}"
        if "maxLength" in schema:
            assert len(value) <= schema["maxLength"], f"{path}: longer than {schema['maxLength']}"


def response_schema(doc: dict[str, Any], path: str, method: str, status: int) -> dict[str, Any] | None:
    """The documented JSON schema of one response, or None when the response is not JSON."""
    op = doc["paths"][path][method.lower()]
    resp = op["responses"].get(str(status))
    assert resp is not None, f"{method} {path}: status {status} is not documented"
    content = resp.get("content", {})
    return content.get("application/json", {}).get("schema") if "application/json" in content else None
