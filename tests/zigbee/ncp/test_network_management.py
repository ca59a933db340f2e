"""Coordinator-mode network management with bellows' real ControllerApplication against the simulated NCP.

Through `NetworkManager` directly and through the whole path a user takes: `otagw zigbee ...` (click) talking to a
running gateway's API (plugin routes, admin token from data_dir), and opening the radio itself when no gateway
runs. Form, backup (Open Coordinator JSON, 0600, key never logged), restore into a fresh NCP (same network, the
device keeps answering), permit-join with an interview, devices, remove, automatic backups kept N deep.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import stat
from pathlib import Path
from typing import Any

import pytest
import yaml
import zigpy.types as zt
from click.testing import CliRunner

from adapters.zigbee.network import (
    FormRequest,
    NetworkError,
    NetworkManager,
    read_backup_file,
    write_backup_file,
)
from adapters.zigbee.sim.device import Behaviour
from gateway.config import load_config
from gateway.plugins import load_plugins
from gateway.service import Gateway
from tests.zigbee.ncp.conftest import Rig, wait_for
from tests.zigbee.ncp.test_bellows import DEV_IEEE, SLEEPY_IEEE, joined_device, read_model

EPID = "dd:dd:dd:dd:dd:dd:dd:01"


async def test_form_with_given_settings_then_refuses_to_replace_without_force(rig: Rig) -> None:
    server = await rig.ncp()
    app = await rig.app(server, auto_form=False, start=False)
    await app.connect()
    m = NetworkManager(app, None)
    req = FormRequest.from_params({"channel": 20, "pan_id": "0x1A62", "extended_pan_id": EPID})
    summary = await m.form(req)
    params = server.ncp.nvm.params
    assert params is not None and server.ncp.network_up
    assert (params.radioChannel, params.panId) == (20, 0x1A62)
    assert zt.ExtendedPanId(params.extendedPanId) == zt.ExtendedPanId.convert(EPID)
    assert summary["extended_pan_id"] == EPID and summary["pan_id"] == "0x1A62" and summary["channel"] == 20
    with pytest.raises(NetworkError, match="already formed") as refused:
        await m.form(FormRequest(channel=11))
    assert refused.value.conflict
    assert server.ncp.nvm.params.panId == 0x1A62  # untouched
    await m.form(FormRequest(channel=25, pan_id=0x2222, force=True))
    assert (server.ncp.nvm.params.radioChannel, server.ncp.nvm.params.panId) == (25, 0x2222)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"channel": 27}, "channel: 27 is outside 11..26"),
        ({"pan_id": "0xFFFF"}, "pan_id: 65535 is outside 1..65534"),
        ({"pan_id": "zz"}, "pan_id: 'zz' is not a number"),
        ({"extended_pan_id": "12:34"}, "extended_pan_id: '12:34' is not 8 bytes"),
        ({"extended_pan_id": "ff:ff:ff:ff:ff:ff:ff:ff"}, "is reserved"),
    ],
)
def test_form_request_rejects_bad_input_naming_it(params: dict[str, Any], message: str) -> None:
    with pytest.raises(NetworkError, match=message):
        FormRequest.from_params(params)


async def test_backup_file_restore_into_fresh_ncp_and_key_never_logged(
    rig: Rig, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    db = tmp_path / "zigbee.db"
    first = await rig.ncp()
    app = await rig.app(first, db)
    ieee = await joined_device(rig, app)
    m = NetworkManager(app, tmp_path)
    backup = await m.backup()
    file = tmp_path / "net.json"
    write_backup_file(file, backup)
    assert stat.S_IMODE(file.stat().st_mode) == 0o600
    doc = json.loads(file.read_text())
    assert doc["metadata"]["format"] == "zigpy/open-coordinator-backup"
    key_hex = bytes(first.ncp.nvm.network_key).hex()
    assert doc["network_key"]["key"] == key_hex  # why the file is owner-only
    await rig.stop_app(app)
    rig.air.detach(first.ncp)

    fresh = await rig.ncp("00:0b:57:ff:fe:00:bb:02")
    app2 = await rig.app(fresh, db, auto_form=False, start=False)  # zigpy database kept, new stick
    await app2.connect()
    summary = await NetworkManager(app2, tmp_path).restore(read_backup_file(file))
    assert summary["extended_pan_id"] == str(backup.network_info.extended_pan_id)
    assert bytes(fresh.ncp.nvm.network_key).hex() == key_hex and fresh.ncp.network_up
    assert await read_model(app2, ieee) == {"model": "SimLight", "manufacturer": "otagw-sim"}
    # zigpy logs whole NetworkInfo/NetworkBackup objects at debug: the key must not reach any log
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "Restoring backup" in logged or "Network info" in logged  # the redacted records were there
    assert key_hex not in logged.replace(":", "").lower()
    assert repr(bytes.fromhex(key_hex))[2:-1] not in logged  # nor as raw frame bytes


async def test_bad_backup_files_are_refused_naming_file_and_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(NetworkError, match=r"bad.json: not valid JSON"):
        read_backup_file(bad)
    bad.write_text(json.dumps({"metadata": {"format": "something-else"}}))
    with pytest.raises(NetworkError, match=r"metadata\.format is not"):
        read_backup_file(bad)
    bad.write_text(json.dumps({"metadata": {"format": "zigpy/open-coordinator-backup", "version": 1}}))
    with pytest.raises(NetworkError, match=r"bad.json: missing key"):
        read_backup_file(bad)


async def test_permit_join_devices_remove_and_auto_backups(rig: Rig, tmp_path: Path) -> None:
    server = await rig.ncp()
    app = await rig.app(server, tmp_path / "zigbee.db")
    m = NetworkManager(app, tmp_path)
    dev = rig.device(DEV_IEEE, 0x1234)
    assert not rig.air.join(dev)  # closed
    assert await m.permit_join(30) == {"permit_join_s": 30}
    assert rig.air.join(dev)
    await wait_for(lambda: dev.ieee in app.devices and app.devices[dev.ieee].model is not None, 8.0)
    (listed,) = m.devices()
    assert listed["ieee"] == DEV_IEEE and listed["model"] == "SimLight" and listed["ota_client"] is True
    paths = [await m.auto_backup(keep=2, now=1_700_000_000 + i) for i in range(3)]
    kept = sorted((tmp_path / "zigbee-backups").iterdir())
    assert kept == paths[1:]
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in kept)
    assert stat.S_IMODE((tmp_path / "zigbee-backups").stat().st_mode) == 0o700
    with pytest.raises(NetworkError, match="not an IEEE address"):
        await m.remove("nope")
    await m.remove(DEV_IEEE)
    await wait_for(lambda: dev.ieee not in app.devices, 10.0)
    assert m.devices() == []
    with pytest.raises(NetworkError, match="no device"):
        await m.remove(DEV_IEEE)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _config(tmp_path: Path, device: str, port: int) -> Path:
    cfg = {
        "data_dir": str(tmp_path / "data"),
        "api": {"listen": f"127.0.0.1:{port}"},
        "matter": {"enabled": False},
        "zigbee": {"enabled": True, "radio": {"device": device, "startup_timeout_s": 20}},
    }
    path = tmp_path / "otagw.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


async def _cli(config: Path, *args: str) -> Any:
    from gateway.cli import main

    runner = CliRunner()
    env = {k: v for k, v in os.environ.items() if k != "OTAGW_API_TOKEN"}
    return await asyncio.to_thread(runner.invoke, main, ["-c", str(config), "zigbee", *args], env=env)


async def test_cli_through_the_running_gateway_and_on_its_own(rig: Rig, tmp_path: Path) -> None:
    server = await rig.ncp()
    config = _config(tmp_path, server.path, _free_port())
    # no gateway: the CLI opens the radio itself and forms the network
    result = await _cli(config, "form", "--channel", "15", "--pan-id", "0x4242", "--extended-pan-id", EPID)
    assert result.exit_code == 0, result.output
    assert "PAN id 0x4242" in result.output and server.ncp.nvm.params.panId == 0x4242
    assert stat.S_IMODE((tmp_path / "data" / "zigbee.db").stat().st_mode) == 0o600
    offline = tmp_path / "offline.json"
    result = await _cli(config, "backup", str(offline))
    assert result.exit_code == 0, result.output
    assert read_backup_file(offline).network_info.pan_id == 0x4242
    result = await _cli(config, "permit-join", "10")
    assert result.exit_code == 2 and "needs the running gateway" in result.output

    plugins = [p for name, p in load_plugins().items() if name == "zigbee"]
    gw = Gateway(load_config(config), plugins=plugins)
    await gw.start()
    try:
        assert gw.health()["adapters"]["zigbee"]["state"] == "running"
        dev = rig.device(DEV_IEEE, 0x1234)
        child = rig.device(SLEEPY_IEEE, 0x2345, behaviour=Behaviour(sleepy=True))  # the coordinator's child
        result = await _cli(config, "permit-join", "30")
        assert result.exit_code == 0, result.output
        assert rig.air.join(dev) and rig.air.join(child)
        app = gw.adapter("zigbee").instance.app  # type: ignore[union-attr]
        for d in (dev, child):
            await wait_for(lambda d=d: d.ieee in app.devices and app.devices[d.ieee].model is not None, 8.0)
        result = await _cli(config, "devices", "--json")
        assert result.exit_code == 0, result.output
        assert [d["ieee"] for d in json.loads(result.output)] == [DEV_IEEE, SLEEPY_IEEE]
        online = tmp_path / "online.json"
        result = await _cli(config, "backup", str(online))
        assert result.exit_code == 0, result.output
        assert stat.S_IMODE(online.stat().st_mode) == 0o600
        restored = read_backup_file(online).network_info
        assert restored.children == [child.ieee] and restored.extended_pan_id == zt.ExtendedPanId.convert(
            EPID
        )
        # restoring through the running gateway: the radio is rewritten, the adapter does not take it for a loss
        result = await _cli(config, "restore", str(online))
        assert result.exit_code == 0, result.output
        assert "restored network dd:dd:dd:dd:dd:dd:dd:01" in result.output
        adapter = gw.adapter("zigbee").instance
        assert adapter.health() == {"radio": "up", "reconnects": 0}  # type: ignore[union-attr]
        assert await read_model(app, dev.ieee) == {"model": "SimLight", "manufacturer": "otagw-sim"}
        result = await _cli(config, "form")
        assert result.exit_code == 2 and "already formed" in result.output
        result = await _cli(config, "remove", DEV_IEEE)
        assert result.exit_code == 0, result.output
        await wait_for(lambda: dev.ieee not in app.devices, 10.0)
        # an automatic backup was written at start
        assert list((tmp_path / "data" / "zigbee-backups").glob("auto-*.json"))
    finally:
        await gw.stop()
