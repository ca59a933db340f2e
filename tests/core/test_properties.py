"""Property tests: random event sequences against the core never break its invariants.

Invariants checked after every event: no illegal transition escapes (any would raise), the core's internal
indexes agree with the records (`check_invariants`: slots only for transfers, budgets never exceeded, live set,
token index, paused records know where to return), per-transfer counters are monotonic, and every device's
history is one unbroken chain that ends in its current state - also after restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.clock import ManualClock
from gateway.core.interface import (
    Available,
    ReportedStatus,
    StatusReport,
    UnknownToken,
)
from gateway.core.service import UpdateCore
from gateway.core.states import TRANSITIONS, DeviceState
from tests.core.conftest import T0, FakeStore, config, make_entry, matter_dev, zigbee_dev

DEVICES = [
    matter_dev(1),
    matter_dev(2, sleepy=True),
    matter_dev(3, fabric="fabric:bb"),
    zigbee_dev(1),
    zigbee_dev(2, sleepy=True),
    zigbee_dev(3, pan="pan:0002"),
]

op = st.one_of(
    st.tuples(st.just("query"), st.integers(0, 5), st.booleans()),
    st.tuples(st.just("progress"), st.integers(0, 5), st.integers(0, 4)),
    st.tuples(st.just("complete"), st.integers(0, 5)),
    st.tuples(st.just("fail"), st.integers(0, 5)),
    st.tuples(st.just("apply"), st.integers(0, 5), st.booleans()),
    st.tuples(st.just("report"), st.integers(0, 5), st.booleans()),
    st.tuples(st.just("status"), st.integers(0, 5), st.sampled_from(list(ReportedStatus))),
    st.tuples(st.just("advance"), st.sampled_from([1, 30, 600, 3600, 7200])),
    st.tuples(
        st.just("sweep"),
    ),
    st.tuples(st.just("left"), st.integers(0, 5)),
    st.tuples(st.just("rollout"), st.sampled_from(["create", "pause", "resume", "abort"])),
    st.tuples(
        st.just("restart"),
    ),
    st.tuples(st.just("cycle"), st.integers(0, 5)),  # a whole happy episode, interleaved with the rest
)


async def scenario(ops: list[tuple], data_dir: Path) -> None:
    clock = ManualClock(T0)
    store = FakeStore(
        [
            make_entry(version=2, size=3000),
            make_entry(version=3, size=3000),
            make_entry("zigbee", 0x117C, 0x2811, 5, size=2000),
        ]
    )
    cfg = config(
        data_dir,
        budgets={"global": 2, "per_network_default": 1},
        stale_transfer_s=600,
        verify_deadline_s=600,
        retry_backoff_s=30,
        progress_persist_s=0,
        windows={"w": {"start": "23:00", "end": "01:00"}},
        apply_window="w",
    )
    core = UpdateCore(cfg, store, clock, auto_sweep=False)  # type: ignore[arg-type]
    await core.start()
    installed = {i: 1 for i in range(6)}
    last: dict[str, tuple[bytes | None, int, int]] = {}
    rollout_id: str | None = None
    try:
        for o in ops:
            kind = o[0]
            if kind == "cycle":
                i = o[1]
                d = DEVICES[i]
                d = d.__class__(
                    **{**{f: getattr(d, f) for f in d.__dataclass_fields__}, "current_version": installed[i]}
                )
                res = await core.query(d)
                if isinstance(res, Available):
                    await core.progress(res.token, 0, res.image.size)
                    await core.download_complete(res.token)
                    dec = await core.apply_request(res.token, res.image.numeric_version)
                    if dec.action == 0:
                        installed[i] = res.image.numeric_version
                        await core.report_version(d.key, installed[i])
            if kind in ("query", "progress", "complete", "fail", "apply", "report", "status", "left"):
                i = o[1]
                dev = DEVICES[i]
                rec = core._devices.get(dev.key.device_id)
                token = rec.token if rec else None
            if kind == "query":
                d = (
                    dev
                    if not o[2]
                    else dev.__class__(
                        **{
                            **{f: getattr(dev, f) for f in dev.__dataclass_fields__},
                            "current_version": installed[i],
                        }
                    )
                )
                res = await core.query(d)
                if isinstance(res, Available):
                    assert len(res.token) >= 8 and res.image.protocol == dev.key.protocol
            elif kind == "progress" and token is not None:
                size = rec.target_size or 1000  # type: ignore[union-attr]
                with contextlib.suppress(UnknownToken):
                    await core.progress(token, o[2] * size // 4, size // 4)
            elif kind == "complete" and token is not None:
                await core.download_complete(token)
            elif kind == "fail" and token is not None:
                await core.download_failed(token, "random failure")
            elif kind == "apply" and token is not None:
                dec = await core.apply_request(token, rec.target_version or 0)  # type: ignore[union-attr]
                if o[2] and dec.action == 0 and rec.target_version:  # type: ignore[union-attr]
                    installed[i] = rec.target_version  # type: ignore[union-attr]
            elif kind == "report":
                await core.report_version(dev.key, installed[i] if o[2] else 1)
            elif kind == "status":
                await core.status_report(dev.key, StatusReport(o[2], 50))
            elif kind == "left":
                await core.device_left(dev.key)
            elif kind == "advance":
                await clock.advance(o[1])
            elif kind == "sweep":
                await core.sweep()
            elif kind == "rollout":
                if o[1] == "create":
                    r = await core.create_rollout(
                        next(iter(e.image_id for e in store.entries.values() if e.numeric_version == 3)),
                        waves=["1", "100%"],
                        soak_s=60,
                        max_failures=1,
                    )
                    rollout_id = r.rollout_id
                elif rollout_id is not None:
                    r = core.get_rollout(rollout_id)
                    assert r is not None
                    allowed = {
                        "pause": {"active", "halted"},
                        "resume": {"paused", "halted"},
                        "abort": {"active", "paused", "halted"},
                    }[o[1]]
                    if r.status.value in allowed:
                        await getattr(core, f"{o[1]}_rollout")(rollout_id)
            elif kind == "restart":
                await core.stop()
                before = {d: r.state for d, r in core._devices.items()}
                core = UpdateCore(cfg, store, clock, auto_sweep=False)  # type: ignore[arg-type]
                await core.start()  # start() sweeps, which may move timers on; compare only what it kept
                for d, s in before.items():
                    now_s = core._devices[d].state
                    assert now_s == s or now_s in TRANSITIONS[s] or s in TRANSITIONS.get(now_s, ()), (
                        d,
                        s,
                        now_s,
                    )
                last.clear()
            assert core.check_invariants() == [], (o, core.check_invariants())
            for d, r in core._devices.items():
                prev = last.get(d)
                if prev is not None and prev[0] == r.token and r.token is not None:
                    assert r.bytes_sent >= prev[1] and r.acked_offset >= prev[2], (o, d)
                last[d] = (r.token, r.bytes_sent, r.acked_offset)
        for d, r in core._devices.items():
            hist = await core.history(d)
            for a, b in itertools.pairwise(hist):
                assert a.new_state == b.old_state, (d, a, b)
                assert DeviceState(b.new_state) in TRANSITIONS[DeviceState(b.old_state)]
            if hist:
                assert hist[-1].new_state == r.state.value
    finally:
        await core.stop()


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(op, min_size=10, max_size=80))
def test_random_event_sequences_keep_invariants(ops: list[tuple]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(scenario(ops, Path(tmp)))
