"""HTTP routes of the published catalogs: `/publish/<controller>/<key>/...`, outside the admin API.

`<key>` is the controller's catalog-read token (Zigbee2MQTT and ZHA take only a URL, so the token travels in a
path segment, and every image URL in the index carries it too), or `open` for a controller configured
`access: open`. The token must be a scoped credential holding `catalog-read` and named by the controller's
`credential:`; the admin token is refused here (it would end up in controller configs and logs).

    GET index.json                       the controller's index (z2m array, zigpy {"firmwares"}, or for a
                                         matter-server controller {"files": [...]} naming the documents below)
    GET matter/<vid>-<pid>.json          matter-server: one DCL-shaped modelVersion document
    GET images/<sha256>/<file name>      the image (only if published to this controller; else 404)
"""

from __future__ import annotations

import hmac
import logging

from aiohttp import web

from gateway.api.auth import TOKEN_KEY
from gateway.api.credentials import CredentialError, CredentialStore
from gateway.api.errors import ApiError
from gateway.config import PublishController
from gateway.publish.service import Publisher
from gateway.store.errors import CorruptBlobError

log = logging.getLogger(__name__)

CATALOG_SCOPE = "catalog-read"
OPEN_KEY = "open"
CHUNK = 256 * 1024

PUBLISHER_KEY: web.AppKey[Publisher] = web.AppKey("otagw_publisher", Publisher)
PUBLISH_CREDENTIALS_KEY: web.AppKey[CredentialStore] = web.AppKey("otagw_publish_credentials", CredentialStore)


def _authorize(request: web.Request) -> PublishController:
    pub = request.app[PUBLISHER_KEY]
    ctl = pub.controller(request.match_info["controller"])
    if ctl is None:
        raise ApiError(404, "not_found", f"no enabled controller at {request.match_info['controller']!r}")
    key = request.match_info["key"]
    if ctl.access == "open":
        if key != OPEN_KEY:
            raise ApiError(404, "not_found", f"controller {ctl.name} is open: use /publish/{ctl.url_path}/open/")
        return ctl
    if hmac.compare_digest(key.encode(), request.app[TOKEN_KEY].encode()):
        raise ApiError(
            403,
            "forbidden",
            "the admin token is never accepted in a published catalog URL; create a catalog-read token "
            f"(`otagw token create {ctl.credential} --scope catalog-read`)",
        )
    try:
        cred = request.app[PUBLISH_CREDENTIALS_KEY].resolve(key)
    except CredentialError:
        raise ApiError(500, "credentials_unusable", "scoped credentials unusable; see the gateway log") from None
    if cred is None:
        raise ApiError(401, "unauthorized", "unknown or revoked catalog token in the URL", field="key")
    if CATALOG_SCOPE not in cred.scopes or cred.name != ctl.credential:
        raise ApiError(
            403,
            "forbidden",
            f"credential {cred.name!r} may not read controller {ctl.name}'s catalog "
            f"(needs the credential {ctl.credential!r} with scope {CATALOG_SCOPE!r})",
            field="key",
        )
    return ctl


def _root_url(request: web.Request, ctl: PublishController) -> str:
    base = request.app[PUBLISHER_KEY].config.publish.base_url or f"{request.scheme}://{request.host}"
    return f"{base}/publish/{ctl.url_path}/{request.match_info['key']}"


async def index(request: web.Request) -> web.Response:
    ctl = _authorize(request)
    doc = await request.app[PUBLISHER_KEY].documents_for(ctl, _root_url(request, ctl))
    if ctl.kind == "matter-server":
        root = _root_url(request, ctl)
        doc = {"files": sorted(doc), "urls": [f"{root}/matter/{name}" for name in sorted(doc)]}
    return web.json_response(doc, headers={"Cache-Control": "no-store"})


async def matter_document(request: web.Request) -> web.Response:
    ctl = _authorize(request)
    if ctl.kind != "matter-server":
        raise ApiError(404, "not_found", f"controller {ctl.name} is {ctl.kind}, not matter-server")
    docs = await request.app[PUBLISHER_KEY].documents_for(ctl, _root_url(request, ctl))
    name = request.match_info["name"]
    if name not in docs:
        raise ApiError(404, "not_found", f"no update published for {name!r} to controller {ctl.name}")
    return web.json_response(docs[name], headers={"Cache-Control": "no-store"})


async def image(request: web.Request) -> web.StreamResponse:
    ctl = _authorize(request)
    pub = request.app[PUBLISHER_KEY]
    sha = request.match_info["sha256"]
    entry = await pub.image_for(ctl, sha)
    if entry is None:
        raise ApiError(404, "not_found", f"image {sha[:16]} is not published to controller {ctl.name}")
    try:
        reader = pub.store.open_reader(entry)
    except CorruptBlobError as exc:
        raise ApiError(500, "corrupt_image", f"image {entry.image_id} failed verification: {exc}") from None
    counters = pub.counters(ctl.name, entry.image_id)
    counters.started += 1
    resp = web.StreamResponse(
        headers={
            "Content-Type": "application/octet-stream",
            "Content-Length": str(entry.size),
            "Content-Disposition": f'attachment; filename="{entry.file_name}"',
        }
    )
    try:
        await resp.prepare(request)
        offset = 0
        while offset < entry.size:
            chunk = reader.read(offset, CHUNK)
            await resp.write(chunk)
            offset += len(chunk)
            counters.bytes_served += len(chunk)
        await resp.write_eof()
        counters.completed += 1
        log.info(
            "published image downloaded",
            extra={"fields": {"controller": ctl.name, "image": entry.image_id, "bytes": entry.size}},
        )
    finally:
        reader.close()
    return resp


def attach(app: web.Application, publisher: Publisher, credentials: CredentialStore) -> None:
    """Add the publish routes to the API app (call before the app starts)."""
    app[PUBLISHER_KEY] = publisher
    app[PUBLISH_CREDENTIALS_KEY] = credentials
    base = "/publish/{controller}/{key}"
    app.router.add_get(f"{base}/index.json", index, name="publish_index", allow_head=False)
    app.router.add_get(f"{base}/matter/{{name}}", matter_document, name="publish_matter", allow_head=False)
    app.router.add_get(
        f"{base}/images/{{sha256:[0-9a-f]{{64}}}}/{{file_name}}", image, name="publish_image", allow_head=False
    )
