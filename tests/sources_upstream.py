"""A local upstream for the sources tests: an aiohttp server on 127.0.0.1 serving indexes, DCL answers and files
written from the documented formats, with ETags, redirects, 404s, 5xx, slow and truncated bodies on demand."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer


@dataclass
class Upstream:
    files: dict[str, bytes] = field(default_factory=dict)  # path -> body
    status: dict[str, int] = field(default_factory=dict)  # path -> forced status (404, 500, ...)
    redirects: dict[str, str] = field(default_factory=dict)  # path -> location
    hang: set[str] = field(default_factory=set)  # paths that never answer
    truncate: set[str] = field(default_factory=set)  # paths whose body stops half-way
    hits: Counter[str] = field(default_factory=Counter)
    not_modified: Counter[str] = field(default_factory=Counter)
    server: TestServer | None = None

    @property
    def base(self) -> str:
        assert self.server is not None
        return str(self.server.make_url("")).rstrip("/")

    def url(self, path: str) -> str:
        return self.base + path

    def put_json(self, path: str, data: Any) -> None:
        self.files[path] = json.dumps(data).encode()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        path = request.raw_path  # as sent (percent-encoding and query string kept)
        self.hits[path] += 1
        if path in self.hang:
            await asyncio.Event().wait()
        if path in self.redirects:
            raise web.HTTPFound(self.redirects[path])
        if path in self.status:
            return web.Response(status=self.status[path], text="upstream says no")
        body = self.files.get(path, self.files.get(request.path))
        if body is None:
            return web.Response(status=404, text="not found")
        etag = '"' + hashlib.sha256(body).hexdigest()[:16] + '"'
        if request.headers.get("If-None-Match") == etag:
            self.not_modified[path] += 1
            return web.Response(status=304, headers={"ETag": etag})
        if path in self.truncate:
            resp = web.StreamResponse(headers={"ETag": etag})
            resp.content_length = len(body)
            await resp.prepare(request)
            await resp.write(body[: len(body) // 2])
            assert request.transport is not None
            request.transport.close()
            return resp
        return web.Response(
            body=body, headers={"ETag": etag, "Last-Modified": "Tue, 14 Nov 2023 22:13:20 GMT"}
        )

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("GET", "/{tail:.*}", self.handle)
        self.server = TestServer(app, host="127.0.0.1")
        await self.server.start_server()

    async def close(self) -> None:
        if self.server is not None:
            await self.server.close()


def z2m_item(url: str, data: bytes, mfr: int, itype: int, version: int, **extra: Any) -> dict[str, Any]:
    """One Zigbee2MQTT index entry (Koenkk/zigbee-OTA index.json format)."""
    return {
        "fileVersion": version,
        "fileSize": len(data),
        "manufacturerCode": mfr,
        "imageType": itype,
        "sha512": hashlib.sha512(data).hexdigest(),
        "url": url,
        **extra,
    }


def dcl_version(vid: int, pid: int, sv: int, url: str, data: bytes, **extra: Any) -> dict[str, Any]:
    """A DCL `modelVersion` answer for an OTA-capable software version."""
    mv = {
        "vid": vid,
        "pid": pid,
        "softwareVersion": sv,
        "softwareVersionString": f"1.0.{sv}",
        "cdVersionNumber": 1,
        "softwareVersionValid": True,
        "otaUrl": url,
        "otaFileSize": str(len(data)),  # uint64: the DCL's REST (cosmos JSON) writes it as a string
        "otaChecksum": base64.b64encode(hashlib.sha256(data).digest()).decode(),
        "otaChecksumType": 1,
        "minApplicableSoftwareVersion": 0,
        "maxApplicableSoftwareVersion": sv - 1,
        "releaseNotesUrl": f"https://example.invalid/notes/{sv}",
        "creator": "cosmos1test",
    }
    mv.update(extra)
    return {"modelVersion": mv}
