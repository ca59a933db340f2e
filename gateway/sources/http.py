"""The one HTTP layer of the sources: conditional GETs, size limits, timeouts, mirrors, and a zigpy-shaped session.

* `HttpFetcher.get(url)` sends If-None-Match / If-Modified-Since from the validators it remembered for that URL and
  returns `NotModified` on 304; a body larger than the limit, a timeout, a non-2xx answer or a truncated body (fewer
  bytes than Content-Length) raise `SourceError` naming the URL. Redirects are followed (at most 5).
* `mirror` rewrites URL prefixes before any request (air-gapped mirrors; tests point well-known URLs at a local
  server the same way).
* `ZigpySession` is what zigpy's provider classes call `session.get(url)` on: it routes their requests through the
  fetcher, so zigpy's own index parsers run with otagw's limits, caching and mirrors.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import aiohttp

from gateway.sources.model import SourceError

__all__ = ["Body", "HttpFetcher", "NotModified", "ZigpySession"]

MAX_REDIRECTS = 5


class NotModified(Exception):
    """The server answered 304: the cached index is still current."""


@dataclass
class Body:
    url: str
    status: int
    data: bytes
    headers: Mapping[str, str]

    async def read(self) -> bytes:
        return self.data

    async def text(self, encoding: str = "utf-8") -> str:
        return self.data.decode(encoding)

    async def json(self, content_type: str | None = None, **_: Any) -> Any:
        try:
            return json.loads(self.data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise SourceError(f"{self.url}: not JSON: {exc}") from None

    def raise_for_status(self) -> None:  # zigpy sessions are created with raise_for_status; ours already did
        return None


@dataclass
class HttpFetcher:
    """HTTP GETs for one source (see module docstring). `validators` persists ETag/Last-Modified per URL."""

    session: aiohttp.ClientSession
    timeout_s: float = 30.0
    mirror: Mapping[str, str] = field(default_factory=dict)
    validators: dict[str, dict[str, str]] = field(default_factory=dict)
    ssl_context: ssl.SSLContext | None = None  # a vendor's own CA (IKEA), as zigpy configures it
    requests: int = 0

    def rewrite(self, url: str) -> str:
        for prefix, replacement in self.mirror.items():
            if url.startswith(prefix):
                return replacement + url[len(prefix) :]
        return url

    async def get(self, url: str, *, max_bytes: int, conditional: bool = False) -> Body:
        target = self.rewrite(url)
        headers: dict[str, str] = {}
        cached = self.validators.get(url, {}) if conditional else {}
        if "etag" in cached:
            headers["If-None-Match"] = cached["etag"]
        if "last_modified" in cached:
            headers["If-Modified-Since"] = cached["last_modified"]
        self.requests += 1
        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        try:
            async with self.session.get(
                target,
                headers=headers,
                timeout=timeout,
                max_redirects=MAX_REDIRECTS,
                ssl=self.ssl_context if self.ssl_context is not None else True,
            ) as rsp:
                if rsp.status == 304 and conditional:
                    raise NotModified(url)
                if rsp.status >= 400:
                    raise SourceError(f"{url}: HTTP {rsp.status} {rsp.reason or ''}".rstrip())
                declared = rsp.content_length
                if declared is not None and declared > max_bytes:
                    raise SourceError(f"{url}: {declared} bytes is more than the limit of {max_bytes}")
                chunks: list[bytes] = []
                total = 0
                async for chunk in rsp.content.iter_chunked(1 << 16):
                    total += len(chunk)
                    if total > max_bytes:
                        raise SourceError(f"{url}: body exceeds the limit of {max_bytes} bytes")
                    chunks.append(chunk)
                data = b"".join(chunks)
                if declared is not None and len(data) != declared:
                    raise SourceError(f"{url}: truncated body: {len(data)} of {declared} bytes")
                if conditional:
                    fresh = {}
                    if etag := rsp.headers.get("ETag"):
                        fresh["etag"] = etag
                    if modified := rsp.headers.get("Last-Modified"):
                        fresh["last_modified"] = modified
                    self.validators[url] = fresh
                return Body(url, rsp.status, data, dict(rsp.headers))
        except (NotModified, SourceError):
            raise
        except aiohttp.TooManyRedirects:
            raise SourceError(f"{url}: more than {MAX_REDIRECTS} redirects") from None
        except aiohttp.ClientPayloadError as exc:
            raise SourceError(f"{url}: truncated body: {exc}") from None
        except TimeoutError:
            raise SourceError(f"{url}: no complete answer within {self.timeout_s:g} s") from None
        except aiohttp.ClientError as exc:
            raise SourceError(f"{url}: {type(exc).__name__}: {exc}") from None
        except asyncio.CancelledError:
            raise


class _Request:
    def __init__(self, fetcher: HttpFetcher, url: str, max_bytes: int) -> None:
        self.fetcher, self.url, self.max_bytes = fetcher, url, max_bytes

    async def __aenter__(self) -> Body:
        return await self.fetcher.get(self.url, max_bytes=self.max_bytes, conditional=True)

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None


class ZigpySession:
    """Duck-typed `aiohttp.ClientSession` for zigpy providers: `async with session.get(url) as rsp`."""

    def __init__(self, fetcher: HttpFetcher, max_bytes: int) -> None:
        self.fetcher, self.max_bytes = fetcher, max_bytes

    def get(self, url: str, **_: Any) -> _Request:  # zigpy's ssl=... is the fetcher's ssl_context
        return _Request(self.fetcher, str(url), self.max_bytes)
