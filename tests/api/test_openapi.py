"""The OpenAPI document is true: every registered route is documented and every documented operation is
registered; the document is valid OpenAPI 3.1 structure with resolvable references."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from gateway.api.openapi import openapi_path
from tests.api.conftest import ApiHarness


def registered(app: web.Application) -> set[tuple[str, str]]:
    out = set()
    for route in app.router.routes():
        resource = route.resource
        if resource is None or isinstance(resource, web.StaticResource):
            continue
        if route.method == "HEAD":  # aiohttp adds HEAD beside GET
            continue
        out.add((route.method, openapi_path(resource.canonical)))
    return out


def documented(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return {(m.upper(), p) for p, item in doc["paths"].items() for m in item}


async def test_routes_and_document_agree(harness: ApiHarness) -> None:
    routes = registered(harness.app)
    docs = documented(harness.doc)
    assert routes - docs == set(), "registered but not documented"
    assert docs - routes == set(), "documented but not registered"
    assert len(routes) >= 19


async def test_document_structure_and_refs(harness: ApiHarness) -> None:
    doc = harness.doc
    assert doc["openapi"].startswith("3.")
    assert doc["components"]["securitySchemes"]["bearer"] == {"type": "http", "scheme": "bearer"}
    schemas = doc["components"]["schemas"]
    text = json.dumps(doc)
    for ref in {part.split('"')[0] for part in text.split('"$ref": "')[1:]}:
        assert ref.startswith("#/components/schemas/"), ref
        assert ref.rsplit("/", 1)[1] in schemas, f"dangling {ref}"
    ids = [op["operationId"] for item in doc["paths"].values() for op in item.values()]
    assert len(ids) == len(set(ids)), "operationIds must be unique"
    for path, item in doc["paths"].items():
        for method, op in item.items():
            params = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
            assert params == {seg[1:-1] for seg in path.split("/") if seg.startswith("{")}, (method, path)
            assert op["responses"], (method, path)


async def test_health_is_the_only_unauthenticated_api_route(harness: ApiHarness) -> None:
    public = {
        (m, p)
        for p, item in harness.doc["paths"].items()
        for m, op in item.items()
        if op.get("security") == []
    }
    assert public == {("get", "/healthz"), ("get", "/livez"), ("get", "/login"), ("post", "/login")}


async def test_reference_003_manifest_fields_documented(harness: ApiHarness) -> None:
    manifest = harness.doc["components"]["schemas"]["PackageManifest"]["properties"]
    for key in (
        "package_id",
        "bucket",
        "file_name",
        "manifest_version",
        "name",
        "version",
        "description",
        "size",
        "license",
        "license_url",
        "copyright",
        "owner",
        "packager",
        "release_date",
        "content_type",
        "sha256",
    ):
        assert key in manifest
    query = harness.doc["components"]["schemas"]["QueryOut"]["properties"]
    assert {"packages", "callback_interval"} <= set(query)
    status = harness.doc["components"]["schemas"]["ReportedStatus"]["enum"]
    assert status == ["Notified", "Downloading", "Updating", "Successfully Updated", "Failed to Update"]


async def test_unknown_routes_and_methods_answer_json(harness: ApiHarness) -> None:
    resp = await harness.client.get(
        "/api/v1/nothing", headers={"Authorization": f"Bearer {harness.config.api.token}"}
    )
    assert resp.status == 404 and (await resp.json())["error"]["code"] == "not_found"
    resp = await harness.client.put(
        "/api/v1/images", headers={"Authorization": f"Bearer {harness.config.api.token}"}
    )
    assert resp.status == 405 and (await resp.json())["error"]["code"] == "method_not_allowed"
    assert "GET" in resp.headers["Allow"]
