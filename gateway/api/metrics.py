"""Prometheus metrics: a snapshot of the core's counters, rollouts and device errors rendered per scrape.

The core keeps plain counters (`UpdateCore.counters`, see gateway/core/events.py); this module only reads them,
so nothing is counted twice and a scrape never slows a transfer. Collection is per scrape on a fresh registry:
the values are read (devices and rollouts asynchronously), then rendered in the text exposition format.

Counters end in `_total` and are monotonic: rate() of `otagw_blocks_served_total` is blocks/s,
of `otagw_bytes_served_total` bytes/s.

Besides the snapshot, `Recorder` keeps the two histograms that need observation over time:
`otagw_update_duration_seconds{protocol}` (offer to verified version, from the core's state events and the
record's offer time) and `otagw_http_request_duration_seconds{method,route,status}` (the aiohttp middleware
`http_metrics_middleware`; `route` is the route template, so ids in paths never explode the series count).
Gauges from the snapshot: `otagw_devices{protocol,state}` (present devices), `otagw_rollout_waves{state}`,
`otagw_adapter_up{adapter,state}`, `otagw_build_info{version,python}`.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import platform
import re
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import (
    CollectorRegistry,
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from gateway.core.service import UpdateCore

# core counter name -> (metric name, help, label, kind)
COUNTERS: dict[str, tuple[str, str, str, str]] = {
    "transfers_active": ("otagw_transfers_active", "Transfers in flight", "protocol", "gauge"),
    "transfers_started": ("otagw_transfers_started", "Transfers started", "protocol", "counter"),
    "transfers_completed": (
        "otagw_transfers_completed",
        "Transfers that delivered the whole image",
        "protocol",
        "counter",
    ),
    "transfers_failed": ("otagw_transfers_failed", "Transfers that failed or expired", "protocol", "counter"),
    "updates_succeeded": (
        "otagw_updates_succeeded",
        "Updates verified by a version report",
        "protocol",
        "counter",
    ),
    "updates_failed": ("otagw_updates_failed", "Updates that failed", "protocol", "counter"),
    "updates_not_back": (
        "otagw_updates_not_back",
        "Devices not heard again within their deadline after an apply",
        "protocol",
        "counter",
    ),
    "devices_parked": (
        "otagw_devices_parked",
        "Devices no longer offered an image (did not take, or too many failed attempts)",
        "protocol",
        "counter",
    ),
    "bytes_served": ("otagw_bytes_served", "Image bytes served to devices", "protocol", "counter"),
    "blocks_served": (
        "otagw_blocks_served",
        "Image blocks served (rate() = blocks/s)",
        "protocol",
        "counter",
    ),
    "decisions": ("otagw_query_decisions", "Answers to update queries by outcome", "outcome", "counter"),
}
PROTOCOLS = ("matter", "zigbee")
OUTCOMES = ("available", "not_available", "busy")


@dataclass
class Snapshot:
    counters: dict[str, dict[str, int]] = field(default_factory=dict)
    rollouts: list[dict[str, Any]] = field(default_factory=list)
    device_failures: dict[str, int] = field(default_factory=dict)
    sse_clients: int = 0
    adapters: dict[str, str] = field(default_factory=dict)
    devices: dict[tuple[str, str], int] = field(default_factory=dict)  # (protocol, state) -> present devices
    version: str = "0+unknown"
    sources: dict[str, dict[str, float]] = field(default_factory=dict)  # SourceManager.metrics()
    # gateway.publish Publisher.metrics(): (controller, image id) -> downloads by Z2M / ZHA / matter-server
    published: dict[tuple[str, str], dict[str, int]] = field(default_factory=dict)


class SnapshotCollector(Collector):
    def __init__(self, snap: Snapshot) -> None:
        self.snap = snap

    def collect(self) -> Iterator[Metric]:
        snap = self.snap
        for key, (name, doc, label, kind) in COUNTERS.items():
            values = dict(snap.counters.get(key, {}))
            for default in PROTOCOLS if label == "protocol" else OUTCOMES:
                values.setdefault(default, 0)
            family: CounterMetricFamily | GaugeMetricFamily = (
                CounterMetricFamily(name, doc, labels=[label])
                if kind == "counter"
                else GaugeMetricFamily(name, doc, labels=[label])
            )
            for lv, v in sorted(values.items()):
                family.add_metric([lv], float(v))
            yield family
        statuses = GaugeMetricFamily("otagw_rollouts", "Rollouts by status", labels=["status"])
        counts: dict[str, int] = {}
        for r in snap.rollouts:
            counts[str(r.get("status"))] = counts.get(str(r.get("status")), 0) + 1
        for status in ("active", "paused", "halted", "completed", "aborted"):
            statuses.add_metric([status], float(counts.pop(status, 0)))
        for status, n in counts.items():
            statuses.add_metric([status], float(n))
        yield statuses
        waves = GaugeMetricFamily(
            "otagw_rollout_wave_devices",
            "Devices per rollout wave by outcome",
            labels=["rollout", "wave", "wave_state", "outcome"],
        )
        for r in snap.rollouts:
            for w in r["waves"]:
                for outcome in ("members", "updated", "failed", "in_progress"):
                    waves.add_metric(
                        [str(r["rollout_id"]), str(w["index"]), str(w["state"]), outcome], float(w[outcome])
                    )
        yield waves
        fails = GaugeMetricFamily(
            "otagw_device_failures",
            "Consecutive failed update episodes of a device (only devices with any)",
            labels=["device_id"],
        )
        for dev, n in sorted(snap.device_failures.items()):
            fails.add_metric([dev], float(n))
        yield fails
        sse = GaugeMetricFamily("otagw_sse_clients", "Open event-stream connections")
        sse.add_metric([], float(snap.sse_clients))
        yield sse
        up = GaugeMetricFamily("otagw_adapter_up", "1 when the adapter runs", labels=["adapter", "state"])
        for name, state in sorted(snap.adapters.items()):
            up.add_metric([name, state], 1.0 if state == "running" else 0.0)
        yield up
        devices = GaugeMetricFamily(
            "otagw_devices",
            "Devices on the network by protocol and update state",
            labels=["protocol", "state"],
        )
        for (protocol, state), n in sorted(snap.devices.items()):
            devices.add_metric([protocol, state], float(n))
        yield devices
        wave_states = GaugeMetricFamily("otagw_rollout_waves", "Rollout waves by state", labels=["state"])
        by_state = dict.fromkeys(("pending", "open", "soaking", "done", "halted", "aborted"), 0)
        for r in snap.rollouts:
            for w in r["waves"]:
                by_state[str(w["state"])] = by_state.get(str(w["state"]), 0) + 1
        for state, n in by_state.items():
            wave_states.add_metric([state], float(n))
        yield wave_states
        build = GaugeMetricFamily(
            "otagw_build_info", "Always 1; the labels say what runs", labels=["version", "python"]
        )
        build.add_metric([snap.version, platform.python_version()], 1.0)
        yield build
        for key, doc in SOURCE_METRICS.items():
            fam = GaugeMetricFamily(f"otagw_source_{key}", doc, labels=["source"])
            for src_name, figures in sorted(snap.sources.items()):
                fam.add_metric([src_name], float(figures.get(key, 0.0)))
            yield fam
        for key, doc in PUBLISH_METRICS.items():
            cfam = CounterMetricFamily(f"otagw_publish_{key}", doc, labels=["controller", "image"])
            for (controller, image), counts in sorted(snap.published.items()):
                cfam.add_metric([controller, image], float(counts.get(key, 0)))
            yield cfam


PUBLISH_METRICS = {
    "bytes_served": "Image bytes served to a consuming controller (Zigbee2MQTT, ZHA, matter-server) per image",
    "downloads_started": "Image downloads a consuming controller started, per image",
    "downloads_completed": "Image downloads a consuming controller completed, per image",
}

SOURCE_METRICS = {
    "enabled": "1 when the firmware source is enabled",
    "last_check": "Unix time of the last index check (0: never)",
    "last_success": "Unix time of the last successful index check (0: never)",
    "entries": "Entries in the source's last index",
    "checks": "Index checks",
    "errors": "Failed index checks and downloads",
    "rejected": "Downloads refused by verification (size, checksum, header)",
    "downloads": "Files downloaded and imported",
}


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
UPDATE_BUCKETS = (60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0, 43200.0, 86400.0, 259200.0, 604800.0)


class Histogram:
    """Bucket counts per label set, rendered as a Prometheus histogram family."""

    def __init__(self, name: str, doc: str, labels: list[str], buckets: tuple[float, ...]) -> None:
        self.name, self.doc, self.labels, self.buckets = name, doc, labels, buckets
        self.series: dict[tuple[str, ...], tuple[list[int], list[float]]] = {}

    def observe(self, labels: tuple[str, ...], value: float) -> None:
        counts, total = self.series.setdefault(labels, ([0] * (len(self.buckets) + 1), [0.0]))
        counts[bisect.bisect_left(self.buckets, value)] += 1
        total[0] += value

    def family(self) -> HistogramMetricFamily:
        fam = HistogramMetricFamily(self.name, self.doc, labels=self.labels)
        for labels, (counts, total) in sorted(self.series.items()):
            cumulative, acc = [], 0
            for le, n in zip([*map(str, self.buckets), "+Inf"], counts, strict=True):
                acc += n
                cumulative.append((le, float(acc)))
            fam.add_metric(list(labels), cumulative, sum_value=total[0])
        return fam


class Recorder(Collector):
    """Histograms observed over time (update durations from core events, HTTP request durations)."""

    def __init__(self) -> None:
        self.update_duration = Histogram(
            "otagw_update_duration_seconds",
            "From the offer of an image to the device reporting the new version",
            ["protocol"],
            UPDATE_BUCKETS,
        )
        self.http = Histogram(
            "otagw_http_request_duration_seconds",
            "HTTP API request durations by route template",
            ["method", "route", "status"],
            HTTP_BUCKETS,
        )

    def collect(self) -> Iterator[Metric]:
        yield self.update_duration.family()
        yield self.http.family()

    def on_event(self, ev: Any, core: Any) -> None:
        if ev.kind != "state" or ev.new != "updated" or ev.device_id is None:
            return
        rec = core.get_device(ev.device_id)
        started = getattr(rec, "token_issued_at", None)
        if rec is not None and started is not None and ev.at >= started:
            self.update_duration.observe((rec.protocol,), ev.at - started)

    async def follow(self, core: Any) -> None:
        """Observe update durations from the core's event stream until cancelled."""
        events = core.subscribe()
        try:
            async for ev in events:
                try:
                    self.on_event(ev, core)
                except Exception:  # a metric must never end the stream
                    logging.getLogger(__name__).exception("metrics: event %s not recorded", ev.kind)
        finally:
            with contextlib.suppress(Exception):
                await events.aclose()


RECORDER_KEY: web.AppKey[Recorder] = web.AppKey("otagw_metrics_recorder", Recorder)


def http_metrics_middleware(monotonic: Callable[[], float]) -> Any:
    """aiohttp middleware timing every request (errors included) into the app's Recorder."""

    @web.middleware
    async def middleware(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        start = monotonic()
        status = 500
        try:
            resp = await handler(request)
            status = resp.status
            return resp
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            route = request.match_info.route.resource
            template = route.canonical if route is not None else "unmatched"
            if status == 404 and route is None:
                template = "unmatched"
            request.app[RECORDER_KEY].http.observe(
                (request.method, template, str(status)), max(0.0, monotonic() - start)
            )

    return middleware


def start_recorder(app: web.Application, core: Any) -> None:
    """Follow the core's events for the app's lifetime (startup/cleanup hooks)."""

    async def _start(app: web.Application) -> None:
        app[_TASK_KEY] = asyncio.get_running_loop().create_task(app[RECORDER_KEY].follow(core))

    async def _stop(app: web.Application) -> None:
        task = app.get(_TASK_KEY)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    app.on_startup.append(_start)
    app.on_shutdown.append(_stop)


_TASK_KEY: web.AppKey[asyncio.Task[None]] = web.AppKey("otagw_metrics_task", asyncio.Task)


def render(snap: Snapshot, recorder: Recorder | None = None) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(snap))
    if recorder is not None:
        registry.register(recorder)
    return generate_latest(registry)


def take_snapshot(
    core: UpdateCore,
    rollouts: list[dict[str, Any]],
    sse_clients: int,
    adapters: dict[str, str],
    version: str = "0+unknown",
) -> Snapshot:
    counters = {k: {str(lk): int(lv) for lk, lv in v.items()} for k, v in core.metrics().items()}
    # the core counts decisions by answer type (Available, NotAvailable, Busy)
    counters["decisions"] = {_snake(k): v for k, v in counters.get("decisions", {}).items()}
    records = core.list_devices()
    failures = {d.device_id: d.failures for d in records if d.failures}
    devices: dict[tuple[str, str], int] = {}
    for d in records:
        if d.present:
            key = (d.protocol, d.state.value)
            devices[key] = devices.get(key, 0) + 1
    return Snapshot(
        counters=counters,
        rollouts=rollouts,
        device_failures=failures,
        sse_clients=sse_clients,
        adapters=adapters,
        devices=devices,
        version=version,
    )


CONTENT_TYPE = CONTENT_TYPE_LATEST
