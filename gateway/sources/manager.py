"""The sources scheduler: checks enabled sources' indexes, downloads what the fleet can use, imports verified files.

* **No network unless enabled**: a disabled source is never contacted, not even by `check`; with no enabled source
  the manager starts no task and opens no HTTP session.
* **Metadata first**: a check fetches the index only (conditional requests; 304 keeps the previous entries). Then
  the best entry for each device of the fleet (`fleet()`: the core's device records; same applicability rules as
  selection) is downloaded if it is not in the catalog yet. `download: manual` sources download only on request
  (`fetch`).
* **Schedule**: every `check_interval_s`, spread by +/- `jitter` (random, seedable); after a failed check the next
  try comes after 60 s doubling up to the interval (backoff). Time comes from the injected clock.
* **Verification** (gateway/sources/verify.py) before anything is stored; a rejected file is reported with source,
  entry and field, counted, and never enters the catalog. Accepted files go through `ImageStore.add_bytes` (atomic,
  deduplicated) with source `source:<name>`: they start `available`, or approved when the source is listed in
  `policy.auto_approve_sources`.
* **State** per source in `<data_dir>/sources/<name>.json` (0600 in a 0700 dir): validators (ETag /
  Last-Modified), the last index's entries, imported keys, counters. The CLI and the gateway share it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import re
import tempfile
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from gateway.clock import Clock
from gateway.config import Config, SourceConfig
from gateway.sources.dcl import DCL_MAIN_NET, load_dcl_index, parse_models
from gateway.sources.http import HttpFetcher, NotModified
from gateway.sources.model import SourceEntry, SourceError, VerificationError
from gateway.sources.paa import fetch_paa_certificates, paa_dir
from gateway.sources.verify import verify_download
from gateway.sources.zigbee import PROVIDERS, load_zigbee_index, zigpy_ssl_context
from gateway.store.approval import UPSTREAM_PREFIX, device_descriptor
from gateway.store.errors import StoreError
from gateway.store.model import CatalogEntry
from gateway.store.selection import SelectionIndex
from gateway.store.store import ImageStore

__all__ = ["CheckReport", "SourceManager", "SourceStatus", "manager_for_core", "stub_entry"]

log = logging.getLogger(__name__)

BACKOFF_FIRST_S = 60.0
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass
class SourceStatus:
    name: str
    type: str
    enabled: bool
    url: str | None
    last_check: float | None = None  # wall time of the last attempt
    last_success: float | None = None
    last_error: str | None = None
    entries: int = 0
    checks: int = 0
    errors: int = 0
    consecutive_failures: int = 0
    not_modified: int = 0
    downloads: int = 0
    rejected: int = 0
    next_check: float | None = None  # wall time

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class CheckReport:
    source: str
    entries: int = 0
    not_modified: bool = False
    imported: list[str] = field(default_factory=list)  # image ids
    rejected: list[str] = field(default_factory=list)  # "source entry ...: field: message"
    errors: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def stub_entry(e: SourceEntry) -> CatalogEntry:
    """A catalog-shaped view of an index entry so selection's applicability rules decide who it is for."""
    return CatalogEntry(
        image_id=f"{e.source}:{e.key}",
        sha256="",
        package_id="",
        bucket=e.protocol,
        file_name="",
        manifest_version="1",
        name=e.key,
        version=e.version_string or str(e.version),
        description=None,
        size=e.size or 0,
        license=None,
        license_url=None,
        copyright=None,
        owner=None,
        packager=e.source,
        release_date=None,
        content_type="application/octet-stream",
        protocol=e.protocol,
        vendor_id=e.vendor_id,
        product_id=e.product_id,
        numeric_version=e.version,
        version_string=e.version_string or str(e.version),
        min_applicable=e.min_applicable,
        max_applicable=e.max_applicable,
        min_hw=e.min_hw,
        max_hw=e.max_hw,
        valid=e.valid,
        model_ids=e.model_ids,
        source=UPSTREAM_PREFIX + e.source,
    )


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class _SourceState:
    def __init__(self, cfg: SourceConfig, path: Path) -> None:
        self.cfg = cfg
        self.path = path
        self.status = SourceStatus(cfg.name, cfg.type, cfg.enabled, cfg.url)
        self.validators: dict[str, dict[str, str]] = {}
        self.entries: list[SourceEntry] = []
        self.imported: dict[str, str] = {}  # entry key -> image id
        self.refused: set[str] = (
            set()
        )  # entry keys whose download failed verification (until the index changes)
        self.next_due_mono: float | None = None
        self.load()

    def load(self) -> None:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            log.warning("source %s: ignoring unreadable state %s: %s", self.cfg.name, self.path, exc)
            return
        self.validators = data.get("validators", {})
        self.entries = [SourceEntry.from_dict(e) for e in data.get("entries", [])]
        self.imported = data.get("imported", {})
        self.refused = set(data.get("refused", []))
        for k, v in data.get("status", {}).items():
            if k not in ("name", "type", "enabled", "url", "next_check") and hasattr(self.status, k):
                setattr(self.status, k, v)

    def save(self) -> None:
        data = {
            "validators": self.validators,
            "entries": [e.to_dict() for e in self.entries],
            "imported": self.imported,
            "refused": sorted(self.refused),
            "status": self.status.to_dict(),
        }
        _write_private(self.path, json.dumps(data, separators=(",", ":")))


class SourceManager:
    """See module docstring. `fleet()` returns device records (the core's `list_devices()`)."""

    def __init__(
        self,
        config: Config,
        store: ImageStore,
        clock: Clock,
        *,
        fleet: Callable[[], Iterable[Any]] = lambda: (),
        on_catalog_change: Callable[[], Awaitable[None]] | None = None,
        publish: Callable[[str, dict[str, Any]], None] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.clock = clock
        self.fleet = fleet
        self.on_catalog_change = on_catalog_change
        self.publish = publish or (lambda kind, data: None)
        self.rng = rng or random.Random()
        state_dir = config.data_dir / "sources"
        self.states = {s.name: _SourceState(s, state_dir / f"{s.name}.json") for s in config.sources}
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None
        self._locks = {name: asyncio.Lock() for name in self.states}

    # ------------------------------------------------------------------------------------------ lifecycle
    @property
    def enabled(self) -> list[str]:
        return [n for n, s in self.states.items() if s.cfg.enabled]

    async def start(self) -> None:
        """Schedule the enabled sources (nothing at all when none is enabled)."""
        if not self.enabled or self._task is not None:
            return
        now = self.clock.monotonic()
        for name in self.enabled:
            st = self.states[name]
            last = st.status.last_check
            # a restart does not re-check a source checked recently; a first start checks soon (jittered)
            age = self.clock.now() - last if last is not None else None
            wait = 0.0 if age is None else max(0.0, st.cfg.check_interval_s - age)
            st.next_due_mono = now + self._jittered(wait, st.cfg.jitter) if wait else now
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _jittered(self, seconds: float, jitter: float) -> float:
        return max(0.0, seconds * (1 + jitter * (2 * self.rng.random() - 1)))

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(headers={"Accept": "application/json"})
        return self._session

    async def _run(self) -> None:
        while True:
            now = self.clock.monotonic()
            due = [s for s in self.states.values() if s.cfg.enabled and s.next_due_mono is not None]
            if not due:
                return
            soonest = min(due, key=lambda s: s.next_due_mono or 0.0)
            wait = (soonest.next_due_mono or now) - now
            if wait > 0:
                await self.clock.sleep(wait)
                continue
            try:
                await self.check(soonest.cfg.name)
            except Exception:  # one broken source must not stop the others
                log.exception("source %s: check failed", soonest.cfg.name)

    def _schedule_next(self, st: _SourceState, ok: bool) -> None:
        interval = st.cfg.check_interval_s
        if ok:
            delay = self._jittered(interval, st.cfg.jitter)
        else:
            delay = self._jittered(
                min(interval, BACKOFF_FIRST_S * 2 ** (st.status.consecutive_failures - 1)), st.cfg.jitter
            )
        st.next_due_mono = self.clock.monotonic() + delay
        st.status.next_check = self.clock.now() + delay

    # ------------------------------------------------------------------------------------------ queries
    def get(self, name: str) -> _SourceState:
        st = self.states.get(name)
        if st is None:
            known = ", ".join(self.states) or "none configured"
            raise SourceError(f"no source named {name!r} (sources: {known})")
        return st

    def statuses(self) -> list[SourceStatus]:
        for st in self.states.values():
            st.status.entries = len(st.entries)
        return [st.status for st in self.states.values()]

    def entries(self, name: str | None = None) -> list[SourceEntry]:
        names = [name] if name else list(self.states)
        return [e for n in names for e in self.get(n).entries]

    def _fetcher(self, st: _SourceState) -> HttpFetcher:
        return HttpFetcher(
            self._http(),
            timeout_s=st.cfg.timeout_s,
            mirror=st.cfg.mirror,
            validators=dict(st.validators),  # committed only when the index was accepted (see _check_index)
            ssl_context=zigpy_ssl_context(st.cfg),
        )

    def _fleet_models(self) -> set[tuple[int, int]]:
        return {
            (r.vendor_id, r.product_id)
            for r in self.fleet()
            if r.protocol == "matter" and r.vendor_id is not None and r.product_id is not None
        }

    def wanted(self, entries: Iterable[SourceEntry], devices: Iterable[Any]) -> list[SourceEntry]:
        """The entries that are the best update for at least one device (in index order, no duplicates)."""
        by_id = {f"{e.source}:{e.key}": e for e in entries}
        index = SelectionIndex.build(stub_entry(e) for e in by_id.values())
        chosen: set[str] = set()
        for rec in devices:
            desc = device_descriptor(rec)
            if desc is None:
                continue
            best = index.select(desc)
            if best is not None:
                chosen.add(best.image_id)
        return [e for k, e in by_id.items() if k in chosen]

    # ------------------------------------------------------------------------------------------ commands
    async def check(self, name: str, *, download: bool = True) -> CheckReport:
        """Fetch `name`'s index now; download and import what the fleet can use (unless `download` is False)."""
        st = self.get(name)
        if not st.cfg.enabled:
            raise SourceError(
                f"source {name} is disabled: set `enabled: true` for it under `sources:` in the config first "
                "(otagw contacts no source you did not enable)"
            )
        report = CheckReport(name)
        async with self._locks[name]:
            st.status.checks += 1
            st.status.last_check = self.clock.now()
            try:
                if st.cfg.type == "dcl_paa":
                    await self._check_paa(st, report)
                else:
                    await self._check_index(st, report)
            except SourceError as exc:
                st.status.errors += 1
                st.status.consecutive_failures += 1
                st.status.last_error = str(exc)
                report.errors.append(str(exc))
                self._schedule_next(st, ok=False)
                st.save()
                log.warning("source %s: check failed: %s", name, exc)
                self.publish("source", {"source": name, "event": "check_failed", "reason": str(exc)})
                return report
            st.status.consecutive_failures = 0
            st.status.last_success = self.clock.now()
            st.status.last_error = None
            st.status.entries = report.entries = len(st.entries)
            self._schedule_next(st, ok=True)
            st.save()
        self.publish(
            "source",
            {
                "source": name,
                "event": "checked",
                "entries": report.entries,
                "not_modified": report.not_modified,
            },
        )
        if download and st.cfg.download == "matching" and st.cfg.type != "dcl_paa":
            devices = list(self.fleet())
            attempted: set[str] = set()
            while True:  # a refused entry makes way for the next best one
                usable = [e for e in st.entries if e.key not in st.refused]
                todo = [
                    e
                    for e in self.wanted(usable, devices)
                    if e.key not in st.imported and e.key not in attempted
                ]
                if not todo:
                    break
                for e in todo:
                    attempted.add(e.key)
                    await self._download(st, e, report)
            if report.imported and self.on_catalog_change is not None:
                await self.on_catalog_change()
        return report

    async def _check_index(self, st: _SourceState, report: CheckReport) -> None:
        fetcher = self._fetcher(st)
        try:
            if st.cfg.type == "dcl":
                models = self._fleet_models() | parse_models(st.cfg.models, f"sources.{st.cfg.name}")
                st.entries = await load_dcl_index(st.cfg, fetcher, models, st.entries)
            elif st.cfg.type in PROVIDERS:
                st.entries = await load_zigbee_index(st.cfg, fetcher)
            else:  # pragma: no cover - config validation lists the types
                raise SourceError(f"source {st.cfg.name}: unknown type {st.cfg.type}")
        except NotModified:
            st.status.not_modified += 1
            report.not_modified = True
            return
        # Validators of an index that failed to parse are dropped, so the next check fetches it again in full.
        st.validators = fetcher.validators
        st.refused.clear()  # a changed index may have fixed what was refused

    async def _check_paa(self, st: _SourceState, report: CheckReport) -> None:
        result = await fetch_paa_certificates(
            self._fetcher(st),
            st.cfg.url or DCL_MAIN_NET,
            paa_dir(self.config.data_dir),
            st.cfg.max_index_bytes,
        )
        report.errors.extend(result.errors)
        st.status.downloads += result.written
        st.entries = []
        log.info(
            "source %s: %d PAA certificates listed, %d written, %d unchanged, %d errors",
            st.cfg.name,
            result.listed,
            result.written,
            result.unchanged,
            len(result.errors),
        )

    def find(self, ref: str) -> SourceEntry:
        """An index entry by `<source>:<key>` or by a key unique across sources."""
        matches = [e for e in self.entries() if f"{e.source}:{e.key}" == ref or e.key == ref]
        if not matches:
            raise SourceError(
                f"no index entry {ref!r} (run `otagw sources check` first; `otagw sources list --entries` shows keys)"
            )
        if len(matches) > 1:
            shown = ", ".join(f"{e.source}:{e.key}" for e in matches[:4])
            raise SourceError(f"{ref!r} is listed by several sources ({shown}); give <source>:<key>")
        return matches[0]

    async def fetch(self, ref: str) -> CheckReport:
        """Download, verify and import one index entry on request (any enabled source, any download mode)."""
        entry = self.find(ref)
        st = self.get(entry.source)
        if not st.cfg.enabled:
            raise SourceError(f"source {st.cfg.name} is disabled: enable it in the config first")
        report = CheckReport(st.cfg.name, entries=len(st.entries))
        await self._download(st, entry, report)
        if report.imported and self.on_catalog_change is not None:
            await self.on_catalog_change()
        return report

    async def _download(self, st: _SourceState, entry: SourceEntry, report: CheckReport) -> None:
        fetcher = self._fetcher(st)
        try:
            body = await fetcher.get(entry.url, max_bytes=st.cfg.max_image_bytes)
            verified = await verify_download(entry, body.data)
        except VerificationError as exc:
            st.refused.add(entry.key)
            st.status.rejected += 1
            report.rejected.append(str(exc))
            log.warning("source %s: rejected: %s", st.cfg.name, exc)
            self.publish(
                "source",
                {
                    "source": st.cfg.name,
                    "event": "rejected",
                    "entry": entry.key,
                    "field": exc.field,
                    "reason": str(exc),
                },
            )
            st.save()
            return
        except SourceError as exc:
            st.status.errors += 1
            report.errors.append(f"{entry.describe()}: {exc}")
            log.warning("source %s: download failed: %s", st.cfg.name, exc)
            st.save()
            return
        extra: dict[str, Any] = {"packager": f"otagw source {st.cfg.name}"}
        if entry.model_ids:
            extra["model_ids"] = list(entry.model_ids)
        for key in ("min_applicable", "max_applicable", "min_hw", "max_hw"):
            if getattr(entry, key) is not None:
                extra[key] = getattr(entry, key)
        if not entry.valid:
            extra["valid"] = False
        if entry.release_notes_url:
            extra["release_notes_url"] = entry.release_notes_url
        if entry.release_notes:
            extra["description"] = entry.release_notes[:2000]
        name = _SAFE_NAME.sub("_", Path(urlsplit(entry.url).path).name)[:200] or f"{entry.key}.ota"
        try:
            result = await self.store.add_bytes(
                verified.data, file_name=name, source=UPSTREAM_PREFIX + st.cfg.name, extra=extra
            )
            image = result.entry
            if st.cfg.name in self.config.policy.auto_approve_sources and image.approval != "approved":
                image = await self.store.approve(image.image_id, by="policy.auto_approve_sources")
        except StoreError as exc:
            st.status.rejected += 1
            report.rejected.append(f"{entry.describe()}: file: {exc}")
            st.save()
            return
        st.imported[entry.key] = image.image_id
        st.status.downloads += 1
        report.imported.append(image.image_id)
        st.save()
        log.info("source %s: imported %s as %s (%s)", st.cfg.name, entry.key, image.image_id, image.approval)
        self.publish(
            "source",
            {"source": st.cfg.name, "event": "imported", "entry": entry.key, "image_id": image.image_id},
        )

    def metrics(self) -> dict[str, dict[str, float]]:
        """Per source: last check time, entries, errors, rejected, downloads (for /metrics)."""
        out: dict[str, dict[str, float]] = {}
        for st in self.states.values():
            s = st.status
            out[st.cfg.name] = {
                "enabled": float(st.cfg.enabled),
                "last_check": s.last_check or 0.0,
                "last_success": s.last_success or 0.0,
                "entries": float(len(st.entries)),
                "checks": float(s.checks),
                "errors": float(s.errors),
                "rejected": float(s.rejected),
                "downloads": float(s.downloads),
            }
        return out


def manager_for_core(config: Config, store: ImageStore, core: Any, clock: Clock) -> SourceManager:
    """A manager wired to the update core: its devices are the fleet, imports refresh its catalog, and source
    events go on its event bus (the API's live stream)."""
    from gateway.core.events import CoreEvent

    def publish(kind: str, data: dict[str, Any]) -> None:
        fields = {k: v for k, v in data.items() if k != "reason"}
        core.events.publish(
            CoreEvent(kind=kind, at=clock.now(), reason=str(data.get("reason", "")), data=fields)
        )

    return SourceManager(
        config,
        store,
        clock,
        fleet=core.list_devices,
        on_catalog_change=core.catalog_changed,
        publish=publish,
    )
