"""State machine table, typed errors, events pub/sub, read APIs, plan and the state.db schema guard."""

from __future__ import annotations

import asyncio
import sqlite3

import pytest

from gateway.core.events import CoreEvent, EventBus
from gateway.core.interface import Available
from gateway.core.records import StateDBError
from gateway.core.repository import StateDB
from gateway.core.states import (
    TERMINAL_STATES,
    TRANSITIONS,
    DeviceState,
    IllegalTransition,
    check_transition,
)
from tests.core.conftest import CoreFactory, matter_dev

S = DeviceState


def test_every_state_has_a_way_out_and_terminal_states_reopen() -> None:
    for st in DeviceState:
        assert TRANSITIONS[st], st
    for st in TERMINAL_STATES:
        assert S.QUERYING in TRANSITIONS[st]
    # from every state, some path reaches a terminal state
    for st in DeviceState:
        seen, todo = {st}, [st]
        while todo:
            for n in TRANSITIONS[todo.pop()]:
                if n not in seen:
                    seen.add(n)
                    todo.append(n)
        assert seen & TERMINAL_STATES, st


def test_illegal_transition_is_typed_and_explains() -> None:
    with pytest.raises(IllegalTransition) as ei:
        check_transition("matter:x:1:0", S.IDLE, S.UPDATED, "version report")
    e = ei.value
    assert e.old == S.IDLE and e.new == S.UPDATED and "idle -> updated (version report)" in str(e)
    assert "allowed from idle:" in str(e)
    check_transition("d", S.APPLYING, S.UPDATED)
    with pytest.raises(IllegalTransition):
        check_transition("d", S.DOWNLOADING, S.UPDATED)  # success needs an apply step


async def test_event_bus_drops_oldest_for_slow_subscriber() -> None:
    bus = EventBus(queue_size=3)
    got: list[CoreEvent] = []
    remove = bus.add_listener(got.append)
    bus.add_listener(lambda e: 1 / 0)  # a broken listener must not break publishing
    it = bus.subscribe()
    first = asyncio.ensure_future(it.__anext__())
    await asyncio.sleep(0)
    for i in range(6):
        bus.publish(CoreEvent("state", float(i), device_id=f"d{i}"))
    rest = [await first] + [await it.__anext__() for _ in range(2)]
    assert [e.device_id for e in rest] == ["d3", "d4", "d5"] and bus.dropped == 3
    assert len(got) == 6
    remove()
    bus.publish(CoreEvent("state", 9.0))
    assert len(got) == 6
    await it.aclose()
    assert bus.subscribers == 0


async def test_core_events_and_read_apis(make_core: CoreFactory) -> None:
    core = await make_core()
    seen: list[CoreEvent] = []
    core.events.add_listener(seen.append)
    res = await core.query(matter_dev(1))
    assert isinstance(res, Available)
    await core.progress(res.token, 0, 5000)
    kinds = [(e.kind, e.old, e.new) for e in seen]
    assert ("state", "idle", "querying") in kinds and ("decision", None, "Available") in kinds
    assert ("state", "querying", "downloading") in kinds
    prog = [e for e in seen if e.kind == "progress"]
    assert prog and prog[-1].data["percent"] == 25 and prog[-1].to_dict()["bytes_sent"] == 5000
    assert core.image_in_use(res.image.image_id)
    assert not core.image_in_use("0000000000000000")
    await core.observe(matter_dev(2))
    assert [r.device_id for r in core.list_devices({"state": "downloading"})] == [matter_dev(1).key.device_id]
    assert len(core.list_devices({"protocol": "matter"})) == 2
    copy = core.get_device(matter_dev(1).key.device_id)
    assert copy is not None
    copy.state = S.FAILED  # copies: mutating one never touches the core
    assert core.get_device(matter_dev(1).key.device_id).state == S.DOWNLOADING  # type: ignore[union-attr]
    d = copy.to_dict()
    assert d["token"] == res.token.hex() and d["percent"] == 25
    plan = {p.device_id: p for p in core.plan()}
    assert plan[matter_dev(1).key.device_id].outcome == "in_progress"
    assert plan[matter_dev(2).key.device_id].outcome == "update"
    assert plan[matter_dev(2).key.device_id].version_string == "3.0"
    # the plan is a dry run
    assert core.get_device(matter_dev(2).key.device_id).state == S.IDLE  # type: ignore[union-attr]


async def test_newer_schema_is_refused(tmp_path) -> None:
    path = tmp_path / "state.db"
    with sqlite3.connect(path) as c:
        c.execute("PRAGMA user_version=99")
    db = StateDB(path)
    with pytest.raises(StateDBError, match="schema version 99 is newer"):
        await db.open()
    await db.close()


async def test_migration_is_idempotent(tmp_path) -> None:
    for _ in range(2):
        db = StateDB(tmp_path / "state.db")
        await db.open()
        assert await db.load_devices() == []
        await db.close()
