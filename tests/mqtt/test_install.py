"""Home Assistant's install button against the real update core (no broker needed): a single-device rollout
through policy, and every refusal visible with the core's own reason."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.clock import ManualClock
from gateway.config import parse_config
from gateway.core.interface import Available, Busy
from gateway.core.rollouts import RolloutStatus
from gateway.core.service import UpdateCore
from gateway.integrations.mqtt.install import request_install
from gateway.integrations.mqtt.view import Catalog
from tests.core.conftest import FakeStore, make_entry, zigbee_dev

IMAGE = make_entry("zigbee", 0x117C, 0x2811, 0x200, version_string="0x00000200")

Factory = Callable[..., Any]


@pytest.fixture
async def core_with(tmp_path: Path) -> AsyncIterator[Factory]:
    made: list[UpdateCore] = []

    async def make(policy: dict[str, Any] | None = None) -> UpdateCore:
        cfg = parse_config(
            {"data_dir": str(tmp_path / f"d{len(made)}"), "policy": {"auto_approve": False, **(policy or {})}}
        )
        core = UpdateCore(cfg, FakeStore([IMAGE]), ManualClock(), auto_sweep=False)
        await core.start()
        made.append(core)
        return core

    yield make
    for core in made:
        await core.stop()


async def install(core: UpdateCore, device_id: str, **kw: Any) -> Any:
    return await request_install(
        core, device_id, Catalog.of([IMAGE]), core.config.policy, core.clock.now(), **kw
    )


async def test_install_starts_a_single_device_rollout(core_with: Factory) -> None:
    core = await core_with()
    dev, other = zigbee_dev(1, 0x100), zigbee_dev(2, 0x100)
    await core.observe(dev)
    await core.observe(other)
    # without the button, auto-approve off: nothing is offered
    assert isinstance(await core.query(dev), type(await core.query(other)))
    result = await install(core, dev.key.device_id)
    assert result.result == "accepted", result
    r = core.get_rollout(result.rollout_id)
    assert r is not None and r.status == RolloutStatus.ACTIVE and [str(w) for w in r.waves] == ["1"]
    assert core.get_device(dev.key.device_id).state == "update_available"
    # the device gets its update, the other device still does not
    assert isinstance(await core.query(dev), Available)
    assert not isinstance(await core.query(other), Available)
    # pressing again during the transfer changes nothing
    again = await install(core, dev.key.device_id)
    assert again.result == "accepted" and "already under way" in again.reason
    assert len(core.list_rollouts()) == 1


async def test_refusals_say_why(core_with: Factory) -> None:
    core = await core_with(
        {"rules": [{"match": {"devices": ["zigbee:*:00:00:00:00:00:00:00:03:1"]}, "block_versions": [0x200]}]}
    )
    blocked, current, unknown_ids = (
        zigbee_dev(3, 0x100),
        zigbee_dev(4, 0x200),
        zigbee_dev(5, 0x100, manuf=0x1234),
    )
    for d in (blocked, current, unknown_ids):
        await core.observe(d)
    r = await install(core, blocked.key.device_id)
    assert r.result == "refused" and "not approved by policy" in r.reason and "blocked" in r.reason, r
    r = await install(core, current.key.device_id)
    assert (r.result, r.reason) == ("refused", "no newer image in the catalog fits this device")
    r = await install(core, unknown_ids.key.device_id)
    assert r.result == "refused"
    r = await install(core, "zigbee:pan:1a2b:ff:ff:ff:ff:ff:ff:ff:ff:1")
    assert r.result == "refused" and "no device" in r.reason
    r = await install(core, blocked.key.device_id, allowed=False)
    assert r.result == "refused" and "mqtt.allow_install" in r.reason
    await core.device_left(current.key)
    r = await install(core, current.key.device_id)
    assert (r.result, r.reason) == ("refused", "the device left the network")
    assert core.list_rollouts() == []  # no refusal left a rollout behind


async def test_a_closed_download_window_or_a_full_budget_defers_the_install(core_with: Factory) -> None:
    # ManualClock starts on a Tuesday at 22:13 UTC: a 02:00-05:00 window is closed
    core = await core_with(
        {"windows": {"night": {"start": "02:00", "end": "05:00"}}, "download_window": "night"}
    )
    dev = zigbee_dev(6, 0x100)
    await core.observe(dev)
    r = await install(core, dev.key.device_id)
    assert r.result == "deferred" and "download window" in r.reason and "closed" in r.reason, r
    assert core.get_rollout(r.rollout_id).status == RolloutStatus.ACTIVE  # it starts by itself at 02:00
    assert isinstance(await core.query(dev), Busy)

    core = await core_with({"budgets": {"global": 1}})
    busy, waiting = zigbee_dev(7, 0x100), zigbee_dev(8, 0x100)
    await core.observe(busy)
    await core.observe(waiting)
    assert (await install(core, busy.key.device_id)).result == "accepted"
    assert isinstance(await core.query(busy), Available)  # takes the only transfer slot
    r = await install(core, waiting.key.device_id)
    assert r.result == "deferred" and "budget full" in r.reason, r


async def test_an_image_the_core_no_longer_has_is_refused(core_with: Factory) -> None:
    core = await core_with()
    dev = zigbee_dev(9, 0x100)
    await core.observe(dev)
    # the integration's catalog knows an image the core's catalog lost meanwhile
    ghost = make_entry("zigbee", 0x117C, 0x2811, 0x300, version_string="0x00000300")
    r = await request_install(core, dev.key.device_id, Catalog.of([IMAGE, ghost]), core.config.policy, 0.0)
    assert r.result == "refused" and r.reason.startswith("cannot start the update"), r
    assert core.list_rollouts() == []
