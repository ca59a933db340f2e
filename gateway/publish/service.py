"""The publisher: per controller, the images policy offers there, rendered in its format, plus download metrics.

Routes (gateway/publish/routes.py) call `documents_for` / `image_for`; the composition root builds one
`Publisher` and hands it to the API as `extra["publish"]` so `/metrics` renders `metrics()`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway.config import Config, PublishController
from gateway.core.policy import Policy
from gateway.core.service import UpdateCore
from gateway.publish import documents
from gateway.publish.digests import DigestCache, Digests
from gateway.publish.staging import Published, published_entries
from gateway.store.model import CatalogEntry
from gateway.store.store import ImageStore


@dataclass
class DownloadCounters:
    bytes_served: int = 0
    started: int = 0
    completed: int = 0


@dataclass
class Publisher:
    config: Config
    store: ImageStore
    core: UpdateCore
    digests: DigestCache = field(init=False)
    downloads: dict[tuple[str, str], DownloadCounters] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.digests = DigestCache(self.config.data_dir)

    # ------------------------------------------------------------------------------------ controllers
    def controller(self, url_path: str) -> PublishController | None:
        for c in self.config.publish.controllers:
            if c.url_path == url_path and c.enabled:
                return c
        return None

    async def published(
        self, controller: PublishController, entries: Sequence[CatalogEntry] | None = None
    ) -> list[Published]:
        """What the controller sees now, over the whole catalog or over `entries` (one identity's candidates)."""
        if entries is None:
            entries = await self.store.list()
        core = self.core
        return published_entries(
            controller,
            entries,
            Policy(core.config.policy),
            core.list_devices({"network": controller.name}),
            core.rollout_images_for_network(controller.name),
            core.covering_rollout_ids(),
        )

    def _digests_of(self, entry: CatalogEntry) -> Digests:
        return self.digests.get(entry.sha256, self.store.blobs.path_for(entry.sha256))

    async def documents_for(self, controller: PublishController, root_url: str) -> Any:
        """The controller's index document (z2m list, zigpy dict, matter-server {file: document})."""
        entries = [p.entry for p in await self.published(controller)]
        return await asyncio.to_thread(self._render, controller, entries, root_url)

    def _render(self, controller: PublishController, entries: Sequence[CatalogEntry], root_url: str) -> Any:
        def url(e: CatalogEntry) -> str:
            return f"{root_url}/{documents.image_path(e)}"

        try:
            if controller.kind == "z2m":
                return documents.z2m_index(entries, self._digests_of, url)
            if controller.kind == "zigpy":
                return documents.zigpy_index(entries, self._digests_of, url)
            return documents.matter_documents(entries, self._digests_of, url)
        finally:
            self.digests.flush()

    async def image_for(self, controller: PublishController, sha256: str) -> CatalogEntry | None:
        """The published entry with blob `sha256`, or None when the controller may not see it (absent).

        Staging is evaluated over the candidates of the blob's identity only (an indexed catalog query, fresh
        approvals included), not the whole catalog: one download must not cost an index generation."""
        known = [e for e in self.core.catalog_entries() if e.sha256 == sha256]
        if not known:  # not in the core's view yet (added by another process a moment ago)
            known = [e for e in await self.store.list() if e.sha256 == sha256]
        for ident in {(e.protocol, e.vendor_id, e.product_id) for e in known}:
            candidates = await self.store.entries_for(*ident)
            for p in await self.published(controller, candidates):
                if p.entry.sha256 == sha256:
                    return p.entry
        return None

    # ------------------------------------------------------------------------------------ metrics
    def counters(self, controller: str, image_id: str) -> DownloadCounters:
        return self.downloads.setdefault((controller, image_id), DownloadCounters())

    def metrics(self) -> dict[tuple[str, str], dict[str, int]]:
        """(controller, image id) -> bytes_served, downloads_started, downloads_completed."""
        return {
            key: {"bytes_served": c.bytes_served, "downloads_started": c.started, "downloads_completed": c.completed}
            for key, c in sorted(self.downloads.items())
        }
