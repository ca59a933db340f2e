"""Prometheus without the admin token: the metrics credential (`metrics.auth: token`, the default) or none
(`metrics.auth: open`), on a real running gateway; the new families after a real update episode; and the Grafana
dashboard in contrib/ naming only metrics a real scrape exports."""

from __future__ import annotations

import json
import re
import stat
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from gateway.api.credentials import CredentialStore
from gateway.config import load_config
from gateway.core.interface import Available, DeviceInfo, DeviceKey
from gateway.service import Gateway
from tests.api.conftest import TOKEN
from tests.store_helpers import zigbee_image

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "contrib" / "grafana" / "otagw.json"
KEY = DeviceKey("zigbee", "pan:1a2b", "00:0d:6f:00:00:00:00:01", 1)


async def start(tmp_path: Path, **extra: Any) -> Gateway:
    data = {
        "data_dir": "data",
        "api": {"listen": "127.0.0.1:0", "token": TOKEN},
        "matter": {"enabled": False},
        **extra,
    }
    path = tmp_path / "otagw.yaml"
    path.write_text(yaml.safe_dump(data))
    gw = Gateway(load_config(path))  # matter and zigbee disabled: no adapter starts
    await gw.start()
    return gw


async def scrape(gw: Gateway, token: str | None) -> tuple[int, str]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as s, s.get(f"{gw.api_url}/metrics", headers=headers) as resp:
        return resp.status, await resp.text()


async def one_update(gw: Gateway) -> None:
    """A whole Zigbee update episode through the neutral interface (offer -> blocks -> apply -> new version)."""
    await gw.store.add_bytes(zigbee_image(0x117C, 0x2811, 0x200, 3000), file_name="fw.ota")
    await gw.core.catalog_changed()
    dev = DeviceInfo(KEY, vendor_id=0x117C, product_id=0x2811, current_version=0x100)
    offer = await gw.core.query(dev)
    assert isinstance(offer, Available)
    size = offer.image.size
    for off in range(0, size, 64):
        await gw.core.progress(offer.token, off, min(64, size - off))
    await gw.core.download_complete(offer.token)
    await gw.core.apply_request(offer.token, 0x200)
    await gw.core.report_version(KEY, 0x200)
    assert gw.core.get_device(KEY.device_id).state == "updated"


async def test_metrics_token_by_default_and_never_the_admin_token(tmp_path: Path) -> None:
    gw = await start(tmp_path)
    try:
        token_file = gw.config.data_dir / "metrics-token"
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        metrics_token = token_file.read_text().strip()
        assert metrics_token and metrics_token != TOKEN
        status, text = await scrape(gw, metrics_token)
        assert status == 200 and "otagw_build_info" in text
        assert (await scrape(gw, None))[0] == 401
        assert (await scrape(gw, metrics_token[:-1] + "x"))[0] == 401
        # a scoped token with the metrics scope scrapes; one with other scopes does not
        store = CredentialStore(gw.config.data_dir)
        _, prometheus = store.create("prometheus", "metrics")
        _, lamp = store.create("lamp", "query,status")
        assert (await scrape(gw, prometheus))[0] == 200
        assert (await scrape(gw, lamp))[0] == 403
        # the metrics token opens /metrics only
        async with (
            aiohttp.ClientSession() as s,
            s.get(
                f"{gw.api_url}/api/v1/devices", headers={"Authorization": f"Bearer {metrics_token}"}
            ) as resp,
        ):
            assert resp.status == 401
    finally:
        await gw.stop()


async def test_open_metrics_need_no_credential(tmp_path: Path) -> None:
    gw = await start(tmp_path, metrics={"auth": "open"})
    try:
        status, text = await scrape(gw, None)
        assert status == 200 and "otagw_devices" in text
        assert not (gw.config.data_dir / "metrics-token").exists()
        async with aiohttp.ClientSession() as s, s.get(f"{gw.api_url}/api/v1/devices") as resp:
            assert resp.status == 401  # only /metrics is open
    finally:
        await gw.stop()


def exported_names(text: str) -> set[str]:
    """Every sample name a scrape can carry, from the families' declared types."""
    names: set[str] = set()
    for fam in text_string_to_metric_families(text):
        names.add(fam.name)
        names.update(
            {
                "counter": [f"{fam.name}_total"],
                "histogram": [f"{fam.name}_{s}" for s in ("bucket", "sum", "count")],
            }.get(fam.type, [])
        )
        names.update(s.name for s in fam.samples)
    return names


async def test_new_families_and_the_grafana_dashboard(tmp_path: Path) -> None:
    gw = await start(tmp_path, metrics={"auth": "open"}, policy={"auto_approve": True})
    try:
        await one_update(gw)
        await scrape(gw, None)  # one request already timed
        status, text = await scrape(gw, None)
        assert status == 200
    finally:
        await gw.stop()
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    devices = {(s.labels["protocol"], s.labels["state"]): s.value for s in fams["otagw_devices"].samples}
    assert devices == {("zigbee", "updated"): 1.0}
    durations = {
        s.name: s.value
        for s in fams["otagw_update_duration_seconds"].samples
        if s.labels.get("le") in (None, "+Inf")
    }
    assert durations["otagw_update_duration_seconds_count"] == 1.0
    http = [s for s in fams["otagw_http_request_duration_seconds"].samples if s.name.endswith("_count")]
    assert any(s.labels["route"] == "/metrics" and s.labels["status"] == "200" for s in http)
    assert {s.labels["state"] for s in fams["otagw_rollout_waves"].samples} >= {"open", "done"}
    build = fams["otagw_build_info"].samples[0]
    assert build.value == 1.0 and build.labels["version"]
    # the names the existing dashboards and alerts use are still there
    for legacy in (
        "otagw_transfers_completed_total",
        "otagw_bytes_served_total",
        "otagw_adapter_up",
        "otagw_rollouts",
    ):
        assert legacy in exported_names(text), legacy

    # the dashboard: valid JSON, and every query names only metrics otagw exports
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 15 and len({p["id"] for p in dash["panels"]}) == len(dash["panels"])
    exported = exported_names(text)
    used: set[str] = set()
    for expr in exprs:
        names = set(re.findall(r"\b(otagw_[a-zA-Z0-9_]+)\b", expr))
        assert names, f"query names no otagw metric: {expr}"
        assert names <= exported, f"{expr}: {sorted(names - exported)} not exported"
        used |= names
    # the list is on the dashboard
    for name in (
        "otagw_devices",
        "otagw_bytes_served_total",
        "otagw_rollout_waves",
        "otagw_update_duration_seconds_bucket",
        "otagw_adapter_up",
        "otagw_build_info",
        "otagw_http_request_duration_seconds_bucket",
    ):
        assert name in used, name


@pytest.mark.parametrize("bad", ["tokn", 1])
def test_metrics_auth_is_validated(tmp_path: Path, bad: Any) -> None:
    from gateway.config import ConfigError

    path = tmp_path / "otagw.yaml"
    path.write_text(yaml.safe_dump({"metrics": {"auth": bad}}))
    with pytest.raises(ConfigError, match=r"metrics\.auth"):
        load_config(path)
