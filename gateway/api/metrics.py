"""Prometheus metrics: a snapshot of the core's counters, rollouts and device errors rendered per scrape.

The core keeps plain counters (`UpdateCore.counters`, see gateway/core/events.py); this module only reads them,
so nothing is counted twice and a scrape never slows a transfer. Collection is per scrape on a fresh registry:
the values are read (devices and rollouts asynchronously), then rendered in the text exposition format.

Counters end in `_total` and are monotonic: rate() of `otagw_blocks_served_total` is blocks/s,
of `otagw_bytes_served_total` bytes/s.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import CollectorRegistry, CounterMetricFamily, GaugeMetricFamily, Metric
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
    sources: dict[str, dict[str, float]] = field(default_factory=dict)  # SourceManager.metrics()


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
        for key, doc in SOURCE_METRICS.items():
            fam = GaugeMetricFamily(f"otagw_source_{key}", doc, labels=["source"])
            for src_name, figures in sorted(snap.sources.items()):
                fam.add_metric([src_name], float(figures.get(key, 0.0)))
            yield fam


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


def render(snap: Snapshot) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(snap))
    return generate_latest(registry)


def take_snapshot(
    core: UpdateCore, rollouts: list[dict[str, Any]], sse_clients: int, adapters: dict[str, str]
) -> Snapshot:
    counters = {k: {str(lk): int(lv) for lk, lv in v.items()} for k, v in core.metrics().items()}
    # the core counts decisions by answer type (Available, NotAvailable, Busy)
    counters["decisions"] = {_snake(k): v for k, v in counters.get("decisions", {}).items()}
    failures = {d.device_id: d.failures for d in core.list_devices() if d.failures}
    return Snapshot(
        counters=counters,
        rollouts=rollouts,
        device_failures=failures,
        sse_clients=sse_clients,
        adapters=adapters,
    )


CONTENT_TYPE = CONTENT_TYPE_LATEST
