"""One explicit rollout across two Zigbee networks (two radios, bellows, two simulated NCPs), approval off.

The image is imported while `policy.auto_approve` is false, so nothing is offered until the rollout exists. The
rollout (the core's `create_rollout`) has two waves: the first is the kitchen network's two devices, the second
the rest (the garden network's). Wave 1 must finish before any garden device receives a block, each network
stays under its own per-network budget (1), and every device ends `updated` with the version read back.

Wave membership is a per-rollout hash of the device id (cohort order). To make "wave 1 = the kitchen network" a
fact rather than a 1-in-6 chance, the rollout id is fixed for the create call and the test picks device addresses
whose cohort keys rank the kitchen devices first.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import pytest

from adapters.zigbee.adapter import network_id
from adapters.zigbee.sim.device import SimOtaDevice
from gateway.core.rollouts import RolloutStatus, cohort_key
from gateway.core.service import UpdateCore
from tests.store_helpers import zigbee_image
from tests.zigbee.ncp.test_ota_over_ncp import ITYPE, MFR, NEW
from tests.zigbee.ncp.test_two_radios import TwoRadios, two_radios

ROLLOUT_HEX = "0badc0de"


def ieee(radio: int, n: int) -> str:
    return f"00:0d:6f:00:00:0{radio}:01:{n:02x}"  # TwoRadios.device's addressing


def rollout_status(core: UpdateCore, rollout_id: str) -> RolloutStatus | None:
    r = core.get_rollout(rollout_id)
    return r.status if r is not None else None


def pick_devices(epids: list[str]) -> tuple[list[int], list[int]]:
    """Two kitchen and two garden device numbers whose cohort keys put both kitchen devices first."""
    rid = f"r{ROLLOUT_HEX}"

    def key(radio: int, n: int) -> str:
        return cohort_key(rid, f"zigbee:{epids[radio]}:{ieee(radio, n)}:1")

    kitchen = sorted(range(16), key=lambda n: key(0, n))[:2]
    top = max(key(0, n) for n in kitchen)
    garden = [n for n in range(16) if key(1, n) > top][:2]
    assert len(garden) == 2
    return kitchen, garden


async def test_one_rollout_two_waves_across_two_networks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with two_radios(tmp_path, auto_approve=False) as (rig, core, store, radios):
        rig: TwoRadios
        kitchen, garden = radios.running("kitchen"), radios.running("garden")
        epids = [network_id(a.app.state.network_info.extended_pan_id) for a in (kitchen, garden)]
        assert epids[0] != epids[1]
        numbers = pick_devices(epids)
        devices: dict[str, tuple[int, SimOtaDevice]] = {}
        for radio, adapter in ((0, kitchen), (1, garden)):
            await adapter.app.permit(60)
            for n in numbers[radio]:
                dev = rig.device(radio, n)
                assert rig.airs[radio].join(dev)
                devices[f"zigbee:{epids[radio]}:{dev.ieee}:1"] = (radio, dev)
        image = zigbee_image(MFR, ITYPE, NEW, size=3_001)
        added = await store.add_bytes(image, file_name="both.ota")
        await core.catalog_changed()
        await rig.run_until(core, lambda: all(core.get_device(k) is not None for k in devices), max_s=120)
        # approval is off: known devices, an image that fits them, and still nothing is offered
        for _ in range(30):
            await rig.clock.advance(1.0)
            await core.sweep()
        assert all(d.stats.block_requests == 0 for _, d in devices.values())

        with monkeypatch.context() as m:
            m.setattr(secrets, "token_hex", lambda _n=None: ROLLOUT_HEX)
            r = await core.create_rollout(
                added.entry.image_id, selector={"protocol": "zigbee"}, waves=("2", "100%"), soak_s=60
            )
        assert r.rollout_id == f"r{ROLLOUT_HEX}"
        waves = {k: r.wave_of(core.get_device(k)) for k in devices}  # type: ignore[arg-type]
        assert waves == {k: 0 if radio == 0 else 1 for k, (radio, _) in devices.items()}

        first_block: dict[str, float] = {}
        updated_at: dict[str, float] = {}

        def progress() -> bool:
            for k, (_radio, d) in devices.items():
                if d.stats.block_log and k not in first_block:
                    first_block[k] = d.stats.block_log[0][0]
                rec = core.get_device(k)
                if rec is not None and rec.state == "updated" and k not in updated_at:
                    updated_at[k] = rig.clock.monotonic()
            return len(updated_at) == len(devices)

        await rig.run_until(core, progress, max_s=3600, step_s=5.0)
        wave1 = [k for k, (radio, _) in devices.items() if radio == 0]
        wave2 = [k for k, (radio, _) in devices.items() if radio == 1]
        assert max(updated_at[k] for k in wave1) <= min(first_block[k] for k in wave2)  # wave 1 done first
        assert all(devices[k][1].completed_images[-1] == image for k in devices)
        assert all(core.get_device(k).current_version == NEW for k in devices)  # type: ignore[union-attr]
        assert set(rig.peak_by_network) == set(epids)
        assert all(peak == 1 for peak in rig.peak_by_network.values()), rig.peak_by_network  # own budget each
        await rig.run_until(
            core, lambda: rollout_status(core, r.rollout_id) == RolloutStatus.COMPLETED, max_s=600, step_s=5.0
        )
        assert [s["updated"] for s in core.rollout_progress(r.rollout_id)] == [2, 2]
        events: list[Any] = [e["event"] for e in await core.rollout_events(r.rollout_id)]
        # each step once, in order (a sweep and a device's last transition both advance the rollout)
        assert events == ["created", "wave_complete", "wave_opened", "wave_complete", "completed"]
