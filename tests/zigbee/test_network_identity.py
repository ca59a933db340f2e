"""Network identity by extended PAN id: device ids are `zigbee:epid:<extended PAN id>:<ieee>:<ep>`, stable when the
16-bit PAN id changes, and records from before (`zigbee:pan:<16-bit>:...`) move over at start with their history,
state and first-seen time (gateway.core: `UpdateCore.rename_network`, repository migration step `rename_network`).
"""

from __future__ import annotations

from pathlib import Path

from gateway.clock import ManualClock
from gateway.config import parse_config
from gateway.core.interface import DeviceInfo, DeviceKey
from gateway.core.records import HistoryEntry
from gateway.core.service import UpdateCore
from gateway.store.store import ImageStore
from tests.zigbee.harness import SIM_NETWORK, make_stack, sim_device, synthetic
from tests.zigbee.test_behaviours import NEW, VENDOR

OLD_NETWORK = "pan:1a2b"  # the simulated network's 16-bit PAN id, as records were named before


async def _old_records(tmp_path: Path, clock: ManualClock, ieees: list[str]) -> None:
    cfg = parse_config({"data_dir": str(tmp_path)})
    store = ImageStore(tmp_path, clock=clock)
    await store.open()
    core = UpdateCore(cfg, store, clock, auto_sweep=False)
    await core.start()
    for ieee in ieees:
        key = DeviceKey("zigbee", OLD_NETWORK, ieee, 1)
        await core.observe(DeviceInfo(key, current_version=NEW - 1))
        # a history entry from back then (an earlier update attempt), written the way the core writes them
        await core._repo.write(
            history=[
                HistoryEntry(key.device_id, clock.now(), "idle", "failed", "old attempt", None, None, None)
            ]
        )
    await core.stop()
    await store.close()


async def test_old_pan_records_move_to_the_extended_pan_id_with_their_history(tmp_path: Path) -> None:
    clock = ManualClock()
    dev = sim_device(1, clock, VENDOR)
    other = sim_device(2, clock, VENDOR)  # known before, not on the network now: moves as well
    await _old_records(tmp_path, clock, [str(dev.ieee), str(other.ieee)])
    first_seen = clock.now()
    await clock.advance(3600)
    stack = await make_stack(tmp_path, [dev], [synthetic()], clock=clock)
    try:
        for ieee in (dev.ieee, other.ieee):
            assert stack.core.get_device(f"zigbee:{OLD_NETWORK}:{ieee}:1") is None
            rec = stack.core.get_device(f"zigbee:{SIM_NETWORK}:{ieee}:1")
            assert rec is not None and rec.network == SIM_NETWORK and rec.first_seen == first_seen
            history = await stack.core.history(rec.device_id)
            assert "old attempt" in [h.reason for h in history]  # the history came along
        # and the device is updated under its new id, one record, no duplicate under the old one
        await stack.run_until(lambda: stack.record(dev).state == "updated", max_s=600)
        assert not [d for d in stack.core._book.devices if OLD_NETWORK in d]
    finally:
        await stack.close()
    # a restart: nothing left to move, nothing duplicated
    stack = await make_stack(tmp_path, [], [], clock=clock)
    try:
        assert await stack.core.rename_network("zigbee", OLD_NETWORK, SIM_NETWORK) == 0
        assert stack.core.get_device(f"zigbee:{SIM_NETWORK}:{dev.ieee}:1").state == "updated"
    finally:
        await stack.close()
