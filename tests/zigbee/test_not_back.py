"""Issue 18 over the Zigbee OTA server with simulated devices: a device that never comes back after the apply, one
that comes back on its old version, and a rollout that halts on "not back" failures by its own threshold."""

from __future__ import annotations

from adapters.zigbee.sim import Behaviour
from gateway.clock import ManualClock
from gateway.core.rollouts import RolloutStatus
from tests.zigbee.harness import make_stack, sim_device, synthetic

MFR, ITYPE, NEW = 0x117C, 0x2811, 0x200
VENDOR = (MFR, ITYPE, NEW)
POLICY = {"verify_deadline_s": 900}


async def test_device_never_back_after_apply_is_not_back(tmp_path):
    clock = ManualClock()
    dev = sim_device(1, clock, VENDOR, behaviour=Behaviour(after_apply="never_back"))
    stack = await make_stack(tmp_path, [dev], [synthetic()], clock=clock, policy=POLICY)
    try:
        await stack.run_until(lambda: dev.state == "gone", max_s=600)
        assert stack.record(dev).state in ("applying", "verifying")
        await stack.run_until(lambda: stack.record(dev).state == "failed", step_s=10, max_s=1200)
        rec = stack.record(dev)
        assert rec.failure_kind == "not_back"
        assert rec.state_reason.startswith("not back after update: not heard within 900 s")
        assert stack.core.metrics()["updates_not_back"] == {"zigbee": 1}
    finally:
        await stack.close()


async def test_device_back_on_old_version_is_parked(tmp_path):
    clock = ManualClock()
    dev = sim_device(
        1, clock, VENDOR, behaviour=Behaviour(after_apply="old_version", query_interval_s=300, reboot_s=5)
    )
    stack = await make_stack(tmp_path, [dev], [synthetic()], clock=clock, policy=POLICY)
    try:
        await stack.run_until(lambda: len(dev.stats.applied_at) == 1, max_s=600)
        await stack.run_until(lambda: stack.record(dev).state == "failed", step_s=5, max_s=1200)
        rec = stack.record(dev)
        assert rec.failure_kind == "old_version" and rec.blocked_image_id == rec.target_image_id
        assert dev.file_version == NEW - 1
        # it keeps asking, and is not offered the image that did not take again
        queries = dev.stats.queries
        await stack.run_until(lambda: dev.stats.queries >= queries + 3, step_s=10, max_s=3600)
        assert len(dev.stats.applied_at) == 1
        rec = stack.record(dev)
        assert rec.last_answer == "NotAvailable" and "parked as failed" in (rec.last_answer_reason or "")
        # a person acts: offered again, and this time (told to behave) it takes
        dev.b.after_apply = "new_version"
        await stack.core.retry_device(rec.device_id)
        await stack.run_until(lambda: stack.record(dev).state == "updated", step_s=10, max_s=3600)
        assert dev.file_version == NEW
    finally:
        await stack.close()


async def test_rollout_halts_on_not_back_failures(tmp_path):
    clock = ManualClock()
    devs = [sim_device(i, clock, VENDOR, behaviour=Behaviour(after_apply="never_back")) for i in range(4)]
    stack = await make_stack(
        tmp_path, devs, [synthetic()], clock=clock, policy={**POLICY, "auto_approve": False}
    )
    try:
        image = (await stack.store.list())[0]
        r = await stack.core.create_rollout(image.image_id, waves=["100%"], soak_s=0, max_failures=1)
        await stack.run_until(
            lambda: stack.core.get_rollout(r.rollout_id).status == RolloutStatus.HALTED,  # type: ignore[union-attr]
            step_s=10,
            max_s=7200,
        )
        halted = stack.core.get_rollout(r.rollout_id)
        assert halted is not None and "exceeding max_failures 1" in halted.status_reason
        kinds = {stack.record(d).failure_kind for d in devs if stack.record(d).state == "failed"}
        assert kinds == {"not_back"}
    finally:
        await stack.close()


async def test_low_battery_deferred_then_updated_once_recovered(tmp_path):
    """Battery read over ZCL (Power Configuration, zigpy's codec) at interview and on every query."""
    clock = ManualClock()
    dev = sim_device(1, clock, VENDOR, behaviour=Behaviour(battery_percent=10.5, query_interval_s=600))
    stack = await make_stack(tmp_path, [dev], [synthetic()], clock=clock)
    try:
        await stack.run_until(lambda: stack.record(dev).battery_percent == 10, max_s=60)
        rec = stack.record(dev)
        assert rec.power_source == "battery"
        await stack.run_until(lambda: dev.stats.queries >= 2, step_s=10, max_s=1800)
        rec = stack.record(dev)
        assert rec.last_answer == "Busy" and "battery at 10 % is below the minimum 30 %" in rec.last_answer_reason
        assert dev.offset == 0 and dev.file_version == NEW - 1  # nothing sent
        plan = {p.device_id: p for p in stack.core.plan()}
        assert "battery at 10 %" in plan[rec.device_id].reason
        dev.b.battery_percent = 75.0  # charged
        await stack.run_until(lambda: stack.record(dev).state == "updated", step_s=10, max_s=3600)
        assert dev.file_version == NEW and stack.record(dev).battery_percent == 75
    finally:
        await stack.close()


async def test_mains_device_power_source_from_the_device(tmp_path):
    clock = ManualClock()
    dev = sim_device(1, clock, VENDOR)
    stack = await make_stack(tmp_path, [dev], [synthetic()], clock=clock)
    try:
        await stack.run_until(lambda: stack.record(dev).power_source is not None, max_s=60)
        assert stack.record(dev).power_source == "mains" and stack.record(dev).battery_percent is None
    finally:
        await stack.close()
