"""Health and metrics: /healthz without auth (503 while the core is not running), Prometheus exposition with
the families the dashboard and alerts rely on."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from gateway.api.app import SERVICES_KEY
from tests.api.conftest import ApiHarness


async def test_health_follows_core_state(harness: ApiHarness) -> None:
    svc = harness.app[SERVICES_KEY]
    svc.health = lambda: {"core": "stopping", "adapters": {}}
    body = await harness.call("GET", "/healthz", 503, auth=False)
    assert body["status"] == "stopping"
    svc.health = lambda: {"core": "running", "adapters": {"zigbee": {"state": "running", "error": None}}}
    assert (await harness.call("GET", "/healthz", 200, auth=False))["status"] == "ok"


async def test_metrics_exposition(harness: ApiHarness) -> None:
    text = await harness.call("GET", "/metrics", 200)
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name in (
        "otagw_transfers_active",
        "otagw_transfers_completed",
        "otagw_transfers_failed",
        "otagw_bytes_served",
        "otagw_query_decisions",
        "otagw_rollouts",
        "otagw_rollout_wave_devices",
        "otagw_device_failures",
        "otagw_sse_clients",
        "otagw_adapter_up",
    ):
        assert name in families, name
    protocols = {s.labels["protocol"] for s in families["otagw_transfers_completed"].samples}
    assert protocols == {"matter", "zigbee"}
    outcomes = {s.labels["outcome"] for s in families["otagw_query_decisions"].samples}
    assert outcomes == {"available", "not_available", "busy"}
    up = {s.labels["adapter"]: s.value for s in families["otagw_adapter_up"].samples}
    assert up == {"matter": 0.0, "zigbee": 0.0}
