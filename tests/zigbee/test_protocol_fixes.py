"""Protocol fixes of issue 11 through zigpy's codec, the simulated device and the real core: a refused upgrade is
answered the ZCL way (Default Response ABORT, the client discards the image), and zigpy's own Image Notify after
an interview does not reach devices (the core decides who is notified)."""

from __future__ import annotations

from zigpy.zcl import foundation
from zigpy.zcl.clusters.general import Ota

from adapters.zigbee.sim import Behaviour
from gateway.clock import ManualClock
from gateway.config import parse_config
from tests.zigbee.harness import make_stack, sim_device, synthetic

MFR, ITYPE, NEW = 0x117C, 0x2811, 0x200
VENDOR = (MFR, ITYPE, NEW)
S = foundation.Status
UPGRADE_END = Ota.ServerCommandDefs.upgrade_end.id


async def test_discontinue_at_upgrade_end_answers_default_response_abort(tmp_path):
    clock = ManualClock()
    data = synthetic(size=6000)
    # the device pauses near the end of its download; meanwhile the operator blocks the version it is getting
    dev = sim_device(1, clock, VENDOR, behaviour=Behaviour(stall_at=5000, stall_for_s=20))
    stack = await make_stack(tmp_path, [dev], [data], clock=clock)
    try:
        await stack.run_until(lambda: dev.offset >= 5000, step_s=0.5, max_s=600)
        blocked = parse_config(
            {"data_dir": str(tmp_path), "policy": {"rules": [{"name": "stop", "block_versions": [NEW]}]}}
        )
        stack.core.reload_policy(blocked)
        await stack.run_until(lambda: dev.end_sent >= 1 and dev.state == "idle", step_s=1, max_s=120)
        # ZCL's answer to a refused upgrade: Default Response ABORT to the Upgrade End Request ...
        assert [s for _, cmd, s in dev.stats.default_responses if cmd == UPGRADE_END] == [S.ABORT]
        # ... never an Upgrade End Response telling it to wait (0xFFFFFFFF) for a trigger that never comes
        assert dev.stats.upgrade_end_responses == []
        later = clock.monotonic() + 7200  # two hours on: it never installed the refused image
        await stack.run_until(lambda: clock.monotonic() >= later, step_s=60, max_s=7300)
        assert dev.file_version == NEW - 1 and dev.stats.applied_at == []
        assert dev.pending_version is None  # it discarded the image
        rec = stack.record(dev)
        assert rec.state == "cancelled", rec.state
        tr = stack.adapter.transfers[rec.key]
        assert tr.refused and "policy discontinued" in (tr.failure or "")
    finally:
        await stack.close()


async def test_zigpy_interview_image_notify_is_suppressed(tmp_path):
    clock = ManualClock()
    dev = sim_device(1, clock, VENDOR)
    stack = await make_stack(tmp_path, [dev], [], clock=clock)  # nothing to offer: nobody should be notified
    try:
        await stack.run_until(lambda: stack.record(dev) is not None, max_s=10)
        assert stack.app.get_device(ieee=dev.ieee).is_initialized  # the interview ran to its end
        assert dev.stats.notifies == 0
        assert dev.stats.queries == 0  # so it did not query either
    finally:
        await stack.close()


async def test_interviewed_device_with_update_due_is_notified_once(tmp_path):
    clock = ManualClock()
    dev = sim_device(1, clock, VENDOR)
    stack = await make_stack(tmp_path, [dev], [synthetic()], clock=clock)
    try:
        await stack.run_until(lambda: dev.file_version == NEW, max_s=600)
        # exactly one Image Notify, otagw's (the core's plan said "update"); zigpy's own would be a second
        assert dev.stats.notifies == 1
    finally:
        await stack.close()


async def test_finished_transfer_reports_its_progress_and_completion(tmp_path):
    """`otagw devices show` of a finished Zigbee transfer: no null progress. The device's Upgrade End SUCCESS is
    its word that 100 % arrived; the new version it then runs is its word that the update succeeded."""
    clock = ManualClock()
    data = synthetic(size=3000)
    dev = sim_device(1, clock, VENDOR)
    stack = await make_stack(tmp_path, [dev], [data], clock=clock)
    try:
        await stack.run_until(lambda: stack.record(dev).state == "updated", max_s=600)
        rec = stack.record(dev).to_dict()
        assert rec["reported_status"] == "Successfully Updated"
        assert rec["reported_percent"] == 100 and rec["percent"] == 100
        assert rec["bytes_sent"] == len(data) == rec["acked_offset"]
        progress = {
            k: v
            for k, v in rec.items()
            if ("percent" in k or "bytes" in k or "reported" in k) and k != "battery_percent"  # not progress
        }
        assert None not in progress.values(), progress
        assert rec["bytes_downloaded"] == len(data)
    finally:
        await stack.close()
