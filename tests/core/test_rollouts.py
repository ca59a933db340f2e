"""Rollouts: deterministic waves, soak, auto-halt, pause/resume/abort, restart and cross-process commands."""

from __future__ import annotations

import pytest

from gateway.core.interface import ApplyAction, Available, Busy, Continue, NotAvailable, Wait
from gateway.core.rollouts import RolloutError, RolloutStatus, WaveSpec, cohort_key, parse_waves
from gateway.core.states import DeviceState as S
from tests.core.conftest import CoreFactory, matter_dev

N = 10


async def finish(core, dev, res, ok: bool = True) -> None:
    await core.progress(res.token, 0, res.image.size)
    await core.download_complete(res.token)
    await core.apply_request(res.token, res.image.numeric_version)
    if ok:
        await core.report_version(dev.key, res.image.numeric_version)
    else:
        await core.download_failed(res.token, "image rejected by bootloader")


async def setup(core) -> tuple[object, dict[int, int]]:
    for i in range(N):
        await core.observe(matter_dev(i))
    v3 = next(e for e in core.store.entries.values() if e.numeric_version == 3)
    r = await core.create_rollout(v3.image_id, waves=["1", "50%", "100%"], soak_s=3600, max_failures=0)
    assign = core._assign(r)
    waves = {i: assign[matter_dev(i).key.device_id] for i in range(N)}
    return r, waves


def test_wave_parsing() -> None:
    assert parse_waves(["1", "10%", 50, "100%"]) == [
        WaveSpec(1, False),
        WaveSpec(10, True),
        WaveSpec(50, False),
        WaveSpec(100, True),
    ]
    for bad in (["0%"], ["1.5"], ["abc"], [], ["101%"]):
        with pytest.raises(RolloutError):
            parse_waves(bad)
    assert WaveSpec(10, True).cumulative(25) == 3 and WaveSpec(1, False).cumulative(0) == 0


async def test_waves_soak_and_completion(make_core: CoreFactory, clock) -> None:
    core = await make_core()
    r, waves = await setup(core)
    assert sorted(waves.values()) == [0] + [1] * 4 + [2] * 5  # 1, then up to 50 % (5), then the rest
    canary = next(i for i, w in waves.items() if w == 0)
    assert core.get_device(matter_dev(canary).key.device_id).state == S.UPDATE_AVAILABLE  # type: ignore[union-attr]
    later = next(i for i, w in waves.items() if w == 2)
    res = await core.query(matter_dev(later))
    assert isinstance(res, NotAvailable) and "device is in wave 3, wave 1 is open" in res.reason
    res = await core.query(matter_dev(canary))
    assert isinstance(res, Available) and res.image.numeric_version == 3 and "wave 1" in res.reason
    await finish(core, matter_dev(canary), res)
    r = core.get_rollout(r.rollout_id)
    assert r is not None and r.wave_completed_at == clock.now() and r.current_wave == 0
    await clock.advance(3599)
    await core.sweep()
    assert core.get_rollout(r.rollout_id).current_wave == 0  # type: ignore[union-attr]
    await clock.advance(1)
    await core.sweep()
    assert core.get_rollout(r.rollout_id).current_wave == 1  # type: ignore[union-attr]
    wave2 = [i for i, w in waves.items() if w == 1]
    assert all(core.get_device(matter_dev(i).key.device_id).state == S.UPDATE_AVAILABLE for i in wave2)  # type: ignore[union-attr]
    for i in wave2:
        res = await core.query(matter_dev(i))
        assert isinstance(res, Available)
        await finish(core, matter_dev(i), res)
    await clock.advance(3600)
    await core.sweep()
    for i in [i for i, w in waves.items() if w == 2]:
        res = await core.query(matter_dev(i))
        assert isinstance(res, Available)
        await finish(core, matter_dev(i), res)
    await clock.advance(3600)
    await core.sweep()
    r = core.get_rollout(r.rollout_id)
    assert r is not None and r.status == RolloutStatus.COMPLETED
    stats = core.rollout_progress(r.rollout_id)
    assert [s["updated"] for s in stats] == [1, 4, 5]
    events = [e["event"] for e in await core.rollout_events(r.rollout_id)]
    assert events == [
        "created",
        "wave_complete",
        "wave_opened",
        "wave_complete",
        "wave_opened",
        "wave_complete",
        "completed",
    ]


async def test_cohorts_survive_restart(make_core: CoreFactory) -> None:
    core = await make_core()
    r, waves = await setup(core)
    await core.stop()
    core2 = await make_core()
    r2 = core2.get_rollout(r.rollout_id)
    assert r2 is not None and r2.status == RolloutStatus.ACTIVE
    assign = core2._assign(r2)
    assert {i: assign[matter_dev(i).key.device_id] for i in range(N)} == waves


async def test_failure_halts_pauses_in_flight_and_resume(make_core: CoreFactory, clock) -> None:
    core = await make_core()
    r, waves = await setup(core)
    canary = next(i for i, w in waves.items() if w == 0)
    res = await core.query(matter_dev(canary))
    assert isinstance(res, Available)
    await finish(core, matter_dev(canary), res)
    await clock.advance(3600)
    await core.sweep()
    wave2 = [i for i, w in waves.items() if w == 1]
    offers = {i: await core.query(matter_dev(i)) for i in wave2}
    assert all(isinstance(o, Available) for o in offers.values())
    a, b = wave2[0], wave2[1]
    await core.progress(offers[a].token, 0, 100)  # type: ignore[union-attr]
    await finish(core, matter_dev(b), offers[b], ok=False)
    r = core.get_rollout(r.rollout_id)
    assert r is not None and r.status == RolloutStatus.HALTED
    assert "wave 2: 1 of 4 offered devices failed, exceeding max_failures 0" in r.status_reason
    rec_a = core.get_device(matter_dev(a).key.device_id)
    assert rec_a is not None and rec_a.state == S.PAUSED and rec_a.resume_state == S.DOWNLOADING
    wait = await core.progress(offers[a].token, 100, 100)  # type: ignore[union-attr]
    assert isinstance(wait, Wait) and "halted" in wait.reason
    busy = await core.query(matter_dev(a))
    assert isinstance(busy, Busy)
    await core.resume_rollout(r.rollout_id)
    assert core.get_device(matter_dev(a).key.device_id).state == S.DOWNLOADING  # type: ignore[union-attr]
    assert isinstance(await core.progress(offers[a].token, 100, 100), Continue)  # type: ignore[union-attr]
    assert core.check_invariants() == []


async def test_pause_apply_and_abort(make_core: CoreFactory) -> None:
    core = await make_core()
    r, waves = await setup(core)
    canary = next(i for i, w in waves.items() if w == 0)
    res = await core.query(matter_dev(canary))
    assert isinstance(res, Available)
    await core.progress(res.token, 0, res.image.size)
    await core.download_complete(res.token)
    await core.pause_rollout(r.rollout_id)
    dec = await core.apply_request(res.token, 3)
    assert dec.action == ApplyAction.AWAIT_NEXT_ACTION and dec.delay_s == 120
    with pytest.raises(RolloutError, match="no rollout 'nope'"):
        await core.abort_rollout("nope")
    await core.abort_rollout(r.rollout_id)
    rec = core.get_device(matter_dev(canary).key.device_id)
    assert rec is not None and rec.state == S.CANCELLED
    dec = await core.apply_request(res.token, 3)
    assert dec.action == ApplyAction.DISCONTINUE
    with pytest.raises(RolloutError, match="is aborted"):
        await core.resume_rollout(r.rollout_id)
    # an aborted rollout no longer covers: plain policy (auto-approve) decides again
    res = await core.query(matter_dev(canary))
    assert isinstance(res, Available) and "rollout" not in res.reason


async def test_cli_process_command_reaches_running_gateway(make_core: CoreFactory, clock) -> None:
    gw = await make_core()
    r, waves = await setup(gw)
    canary = next(i for i, w in waves.items() if w == 0)
    res = await gw.query(matter_dev(canary))
    assert isinstance(res, Available)
    cli = await make_core(role="client")
    assert cli.get_rollout(r.rollout_id) is not None
    await cli.pause_rollout(r.rollout_id, "operator pause from CLI")
    await cli.stop()
    await clock.advance(1.0)  # the gateway polls state.db's data_version at most once a second
    busy = await gw.query(matter_dev(canary))
    assert isinstance(busy, Busy) and "operator pause from CLI" in busy.reason
    assert gw.get_device(matter_dev(canary).key.device_id).state == S.PAUSED  # type: ignore[union-attr]
    # a rollout created by the CLI is picked up too
    cli2 = await make_core(role="client")
    v2 = next(e for e in gw.store.entries.values() if e.numeric_version == 2)
    r2 = await cli2.create_rollout(
        v2.image_id, selector={"devices": ["matter:*:0000000000000009:0"]}, waves=["100%"]
    )
    await cli2.stop()
    await gw.sweep()
    assert gw.get_rollout(r2.rollout_id) is not None


async def test_rollout_create_errors(make_core: CoreFactory) -> None:
    core = await make_core()
    with pytest.raises(RolloutError, match="no image"):
        await core.create_rollout("deadbeefdeadbeef")
    v3 = next(e for e in core.store.entries.values() if e.numeric_version == 3)
    with pytest.raises(RolloutError, match="selector protocol zigbee"):
        await core.create_rollout(v3.image_id, selector={"protocol": "zigbee"})
    with pytest.raises(RolloutError, match="bad selector"):
        await core.create_rollout(v3.image_id, selector={"colour": "red"})


async def test_wave_deadline_unblocks_silent_devices(make_core: CoreFactory, clock) -> None:
    core = await make_core()
    for i in range(4):
        await core.observe(matter_dev(i))
    v3 = next(e for e in core.store.entries.values() if e.numeric_version == 3)
    r = await core.create_rollout(v3.image_id, waves=["1", "100%"], soak_s=0, wave_deadline_s=600)
    await clock.advance(600)
    await core.sweep()
    r2 = core.get_rollout(r.rollout_id)
    assert r2 is not None and r2.current_wave == 1
    assert any("deadline passed" in e["reason"] for e in await core.rollout_events(r.rollout_id))


async def test_devices_joining_after_creation_get_cohorts(make_core: CoreFactory) -> None:
    core = await make_core()
    v3 = next(e for e in core.store.entries.values() if e.numeric_version == 3)
    r = await core.create_rollout(v3.image_id, waves=["1", "100%"], soak_s=0)
    first = await core.query(matter_dev(1))  # joins after the rollout: indexed incrementally
    assert isinstance(first, Available) and "wave 1" in first.reason
    second = await core.query(matter_dev(2))
    ranks = sorted(
        [matter_dev(1).key.device_id, matter_dev(2).key.device_id], key=lambda d: cohort_key(r.rollout_id, d)
    )
    # wave membership follows the cohort rank, except that an offered device keeps its wave
    if ranks[0] == matter_dev(2).key.device_id:
        assert isinstance(second, Available) or "wave" in second.reason
    else:
        assert isinstance(second, NotAvailable) and "wave 2" in second.reason
    other_product = await core.query(matter_dev(3, product=0x9999))
    assert isinstance(other_product, NotAvailable) and "rollout" not in other_product.reason
