"""Every zigpy radio library otagw supports (extras znp, deconz, zigate, xbee; ezsp is built in): its config path.

A radio whose device is absent gives one clear error naming the radio type and the path, and the rest of the
gateway serves (the API answers; /healthz names the failure). The libraries are the real ones (installed by the
`test` extra); no radio hardware is needed for this path.
"""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest
import yaml

from adapters.zigbee.radio import RADIO_LIBRARIES, AdapterStartError, app_class_for, start_controller
from gateway.clock import ManualClock
from gateway.config import load_config, parse_config
from gateway.plugins import load_plugins
from gateway.service import Gateway
from tests.api.conftest import TOKEN

RADIOS = ["znp", "deconz", "zigate", "xbee", "ezsp"]


def test_every_radio_library_is_installed_and_importable() -> None:
    assert sorted(RADIO_LIBRARIES) == sorted(RADIOS)
    for radio in RADIOS:
        cls = app_class_for(radio)
        assert cls.__module__.split(".")[0] == RADIO_LIBRARIES[radio][0].split(".")[0]


@pytest.mark.parametrize("radio", RADIOS)
async def test_absent_device_is_one_clear_error_naming_the_path(radio: str, tmp_path: Path) -> None:
    device = f"/dev/otagw-absent-{radio}"
    cfg = parse_config(
        {"zigbee": {"enabled": True, "radio": {"type": radio, "device": device, "startup_timeout_s": 10}}}
    )
    with pytest.raises(AdapterStartError) as err:
        await start_controller(cfg.zigbee, tmp_path)
    message = str(err.value)
    assert message.startswith(f"zigbee radio {radio!r} at {device!r}: "), message
    assert message.endswith("no such device (No such file or directory)"), message
    assert "\n" not in message and "Traceback" not in message


@pytest.mark.parametrize("radio", ["znp", "deconz"])
async def test_the_rest_of_the_gateway_serves(radio: str, tmp_path: Path) -> None:
    device = f"/dev/otagw-absent-{radio}"
    path = tmp_path / "otagw.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "data_dir": str(tmp_path / "data"),
                "api": {"listen": "127.0.0.1:0", "token": TOKEN},
                "matter": {"enabled": False},
                "zigbee": {
                    "enabled": True,
                    "radio": {"type": radio, "device": device, "startup_timeout_s": 10},
                },
            }
        )
    )
    plugins = [p for name, p in load_plugins().items() if name == "zigbee"]
    gw = Gateway(load_config(path), plugins=plugins, clock=ManualClock())
    await gw.start()
    try:
        health = gw.health()["adapters"]["zigbee"]
        assert health["state"] == "failed" and device in health["error"] and radio in health["error"]
        async with aiohttp.ClientSession() as s:
            async with s.get(
                f"{gw.api_url}/api/v1/devices", headers={"Authorization": f"Bearer {TOKEN}"}
            ) as r:
                assert r.status == 200
            async with s.get(
                f"{gw.api_url}/api/v1/zigbee/network", headers={"Authorization": f"Bearer {TOKEN}"}
            ) as r:
                assert r.status == 503 and device in (await r.json())["error"]["message"]
    finally:
        await gw.stop()
