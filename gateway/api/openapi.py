"""The API's route table and the OpenAPI 3.1 document generated from it.

Each route module declares its operations with `RouteTable.op(...)`: method, path, the pydantic models of its
query, JSON body and responses. `create_app` registers exactly these operations on the aiohttp router, the
handlers parse requests with the same models (`parse_body`, `parse_query`) and answer through them (`reply`),
and `build_document` turns the same table into `/api/v1/openapi.json`. So the document cannot drift from what
the server accepts and returns; the tests check the router against the document and validate response bodies
against its schemas.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.json_schema import models_json_schema

from gateway.api.errors import ApiError, Handler, from_validation_error

M = TypeVar("M", bound=BaseModel)

API_PREFIX = "/api/v1"
MAX_JSON_BODY = 1 << 20
# far deeper than any request model here (rollouts nest ~5). json.loads recurses once per level, so a body
# nested thousands deep raises RecursionError inside the parser; that and anything deeper than this is a 400.
MAX_JSON_DEPTH = 64


class Model(BaseModel):
    """Base of request models: unknown fields are errors (a typo must not be silently ignored)."""

    model_config = ConfigDict(extra="forbid")


class ErrorDetail(BaseModel):
    field: str
    message: str


class ErrorInfo(BaseModel):
    code: str = Field(description="machine-readable reason, e.g. invalid_field, not_found, image_in_use")
    message: str
    field: str | None = Field(description="the request part at fault: JSON path, query parameter or header")
    details: list[ErrorDetail] | None = None
    defect: str | None = Field(None, description="image validation: what is wrong with the file")
    offset: int | None = Field(None, description="image validation: byte offset of the defect")
    max_size: int | None = Field(None, description="upload too large: the limit in bytes")


class ErrorBody(BaseModel):
    error: ErrorInfo


@dataclass(frozen=True)
class Resp:
    """One documented response: a pydantic model (JSON) or a bare content type (binary, text, event stream)."""

    description: str
    model: type[BaseModel] | None = None
    content_type: str | None = None
    many: bool = False  # the body is a JSON array of `model`


def err(description: str) -> Resp:
    """A documented error response (body: `ErrorBody`)."""
    return Resp(description, ErrorBody)


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    handler: Handler
    operation_id: str
    summary: str
    tag: str
    responses: Mapping[int, Resp]
    query: type[BaseModel] | None = None
    body: type[BaseModel] | None = None
    raw_body: str | None = None  # content type of a streamed (non-JSON) request body
    auth: bool = True
    description: str = ""
    scope: str | None = None  # the scoped-credential scope that opens it (None: admin token only)


@dataclass
class RouteTable:
    ops: list[Operation] = field(default_factory=list)

    def op(
        self,
        method: str,
        path: str,
        *,
        summary: str,
        tag: str,
        responses: Mapping[int, Resp],
        query: type[BaseModel] | None = None,
        body: type[BaseModel] | None = None,
        raw_body: str | None = None,
        auth: bool = True,
        operation_id: str | None = None,
        scope: str | None = None,
    ) -> Any:
        def deco(handler: Handler) -> Handler:
            self.ops.append(
                Operation(
                    method=method.upper(),
                    path=path,
                    handler=handler,
                    operation_id=operation_id or handler.__name__.lstrip("_"),
                    summary=summary,
                    tag=tag,
                    responses=responses,
                    query=query,
                    body=body,
                    raw_body=raw_body,
                    auth=auth,
                    description=(handler.__doc__ or "").strip(),
                    scope=scope,
                )
            )
            return handler

        return deco

    def register(self, app: web.Application) -> None:
        for o in self.ops:
            app.router.add_route(o.method, o.path, o.handler, name=o.operation_id)


# ------------------------------------------------------------------------------------ request/response helpers
def _too_deep(limit: int) -> ApiError:
    return ApiError(400, "too_deep", f"JSON body nested deeper than {limit} arrays/objects", field="body")


def json_depth(data: Any, limit: int = MAX_JSON_DEPTH) -> int:
    """Nesting depth of parsed JSON, walked level by level (no recursion); stops once past `limit`."""
    depth, level = 0, [data] if isinstance(data, dict | list) else []
    while level and depth <= limit:
        depth += 1
        level = [
            child
            for node in level
            for child in (node.values() if type(node) is dict else node)
            if type(child) is dict or type(child) is list
        ]
    return depth


def load_json_body(raw: bytes, limit: int = MAX_JSON_DEPTH) -> Any:
    """Parse a request body; 400 naming the problem for invalid JSON or nesting deeper than `limit`."""
    try:
        data = json.loads(raw or b"null")
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, "invalid_json", f"body is not valid JSON: {exc}", field="body") from None
    except RecursionError:
        raise _too_deep(limit) from None
    # fewer brackets than the limit cannot nest past it: skip the walk for every ordinary body
    many_brackets = raw.count(b"[") + raw.count(b"{") > limit
    if many_brackets and json_depth(data, limit) > limit:
        raise _too_deep(limit)
    return data


async def parse_body(request: web.Request, model: type[M]) -> M:
    """The JSON body validated by `model`; 400 for unparsable or too deeply nested JSON, 422 naming the field
    for invalid values."""
    if request.content_length is not None and request.content_length > MAX_JSON_BODY:
        raise ApiError(413, "too_large", f"JSON body larger than {MAX_JSON_BODY} bytes", field="body")
    raw = await request.content.read(MAX_JSON_BODY + 1)
    if len(raw) > MAX_JSON_BODY:
        raise ApiError(413, "too_large", f"JSON body larger than {MAX_JSON_BODY} bytes", field="body")
    data = load_json_body(raw)
    if not isinstance(data, dict):
        raise ApiError(400, "invalid_json", "body must be a JSON object", field="body")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise from_validation_error(exc) from None


def parse_query(request: web.Request, model: type[M]) -> M:
    """Query parameters validated by `model` (repeated keys become lists for list fields)."""
    data: dict[str, Any] = {}
    for key in request.query:
        values = request.query.getall(key)
        info = model.model_fields.get(key)
        is_list = info is not None and "list" in str(info.annotation)
        data[key] = values if is_list else values[-1]
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise from_validation_error(exc) from None


def reply(payload: BaseModel | Sequence[BaseModel], status: int = 200) -> web.Response:
    if isinstance(payload, BaseModel):
        body: Any = payload.model_dump(mode="json")
    else:
        body = [p.model_dump(mode="json") for p in payload]
    return web.Response(status=status, text=json.dumps(body), content_type="application/json")


# ----------------------------------------------------------------------------------------- the document
_PARAM = re.compile(r"\{(\w+)(?::[^}]*)?\}")
REF = "#/components/schemas/{model}"


def openapi_path(path: str) -> str:
    """aiohttp `/x/{ref:[^/]+}` -> OpenAPI `/x/{ref}`."""
    return _PARAM.sub(lambda m: "{" + m.group(1) + "}", path)


def build_document(ops: Sequence[Operation], *, title: str, version: str) -> dict[str, Any]:
    """The OpenAPI 3.1 document for `ops`."""
    pairs: list[tuple[type[BaseModel], Any]] = [(ErrorBody, "serialization")]
    for o in ops:
        if o.body is not None:
            pairs.append((o.body, "validation"))
        if o.query is not None:
            pairs.append((o.query, "validation"))
        for r in o.responses.values():
            if r.model is not None:
                pairs.append((r.model, "serialization"))
    unique = list(dict.fromkeys(pairs))
    keymap, defs = models_json_schema(unique, ref_template=REF)
    components = defs.get("$defs", {})

    def ref(model: type[BaseModel], mode: str) -> dict[str, Any]:
        return dict(keymap[(model, mode)])  # type: ignore[index]

    paths: dict[str, dict[str, Any]] = {}
    for o in ops:
        item: dict[str, Any] = {
            "operationId": o.operation_id,
            "summary": o.summary,
            "tags": [o.tag],
            "responses": {},
        }
        if o.description:
            item["description"] = o.description
        if o.auth:
            item["x-otagw-scope"] = o.scope
            who = f"or a scoped token with scope `{o.scope}`" if o.scope else "only (scoped tokens get 403)"
            item["description"] = (item.get("description", "") + f"\n\nAuth: the admin token {who}.").strip()
        params: list[dict[str, Any]] = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in _PARAM.findall(o.path)
        ]
        if o.query is not None:
            qschema = components[ref(o.query, "validation")["$ref"].rsplit("/", 1)[1]]
            required = set(qschema.get("required", []))
            for name, prop in qschema.get("properties", {}).items():
                prop = dict(prop)
                p: dict[str, Any] = {"name": name, "in": "query", "required": name in required}
                if "description" in prop:
                    p["description"] = prop.pop("description")
                prop.pop("title", None)
                p["schema"] = prop
                params.append(p)
        if params:
            item["parameters"] = params
        if o.body is not None:
            item["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": ref(o.body, "validation")}},
            }
        elif o.raw_body is not None:
            item["requestBody"] = {
                "required": True,
                "content": {o.raw_body: {"schema": {"type": "string", "format": "binary"}}},
            }
        for status, r in sorted(o.responses.items()):
            entry: dict[str, Any] = {"description": r.description}
            if r.model is not None:
                schema = ref(r.model, "serialization")
                if r.many:
                    schema = {"type": "array", "items": schema}
                entry["content"] = {"application/json": {"schema": schema}}
            elif r.content_type is not None:
                entry["content"] = {r.content_type: {"schema": {"type": "string"}}}
            item["responses"][str(status)] = entry
        errors = {400, 401, 422} if (o.body or o.query) else {401}
        if o.body or o.raw_body:
            errors.add(413)
        if o.auth:
            errors.add(403)
        else:
            errors.discard(401)
        for status in sorted(errors):
            item["responses"].setdefault(
                str(status),
                {
                    "description": "error",
                    "content": {"application/json": {"schema": ref(ErrorBody, "serialization")}},
                },
            )
        if not o.auth:
            item["security"] = []
        paths.setdefault(openapi_path(o.path), {})[o.method.lower()] = item

    return {
        "openapi": "3.1.0",
        "info": {
            "title": title,
            "version": version,
            "description": (
                "otagw gateway API. Authenticate with `Authorization: Bearer <token>` (the token is in "
                "`<data_dir>/api-token` unless set by `api.token` or `OTAGW_API_TOKEN`). The event stream also "
                "accepts `?token=`; the dashboard uses a session cookie set by `/login`.\n\n"
                "Devices and integrations never hold the admin token: give each a scoped token "
                "(`otagw token create NAME --scope query,status,download [--device DEVICE_ID]` or "
                "`POST /api/v1/tokens`), sent the same way as a bearer token. It opens only the operations whose "
                "`x-otagw-scope` it holds (403 otherwise); one bound to a device may query, report and download "
                "for that device only. Flow: `POST /api/v1/query` answers an offer with `token` and a complete "
                "`download_url` (carrying `?transfer=<token>`); `GET` that URL as given (Range to resume), which "
                "counts as the device's transfer (progress, budget, completion); then `POST /api/v1/status` with "
                "the same `token` (a report for another device's offer is 403)."
            ),
        },
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "paths": paths,
    }
