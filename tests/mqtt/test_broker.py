"""Home Assistant over MQTT against a real broker (mosquitto) and a simulated Zigbee device on zigpy's codec.

What a Home Assistant user sees, read back through a test subscriber: valid retained discovery, update
available -> in progress with percentages -> updated with the new installed version; the install button
(`payload_install` on the command topic) starting the update through a single-device rollout; the broker dying
mid-transfer without losing the final state; a device leaving removing its entity.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from adapters.zigbee.sim import Behaviour
from adapters.zigbee.sim.app import fast_zigpy_timing
from gateway.clock import ManualClock
from gateway.config import parse_config
from gateway.integrations.mqtt.client import MqttIntegration
from gateway.integrations.mqtt.discovery import slug
from tests.mqtt.conftest import Broker, subscriber
from tests.mqtt.ha_schema import check_discovery, check_update_state, discovery_topic
from tests.zigbee.harness import Stack, make_stack, sim_device, synthetic

VENDOR = (0x117C, 0x2811, 0x200)


@pytest.fixture(autouse=True)
def _fast_zigpy() -> Iterator[None]:
    with fast_zigpy_timing():
        yield


def integration(stack: Stack, broker: Broker, **mqtt: Any) -> MqttIntegration:
    cfg = parse_config(
        {
            "mqtt": {
                "enabled": True,
                "broker": broker.url,
                "state_interval_s": 2.0,
                "reconnect_min_s": 1.0,
                **mqtt,
            }
        }
    ).mqtt
    return MqttIntegration(
        cfg,
        stack.core,
        stack.store,
        stack.clock,
        policy=lambda: stack.config.policy,
        health=lambda: {"adapters": {"zigbee": {"state": "running"}}},
        version="test",
    )


@pytest.fixture
async def paced_stack(tmp_path: Path) -> AsyncIterator[tuple[Stack, Any]]:
    """One paced Zigbee light (a block every 0.5 s of clock time) that has 0x1FF and could get 0x200."""
    clock = ManualClock()
    dev = sim_device(1, clock, VENDOR, behaviour=Behaviour(min_block_period_ms=500, query_interval_s=600))
    stack = await make_stack(
        tmp_path / "gw", [dev], [synthetic(*VENDOR, size=6000)], clock=clock, policy={"auto_approve": False}
    )
    try:
        yield stack, dev
    finally:
        await stack.close()


def topics_of(dev_id: str) -> tuple[str, str, str, str]:
    s = slug(dev_id)
    return (
        f"homeassistant/update/otagw/{s}/config",
        f"otagw/device/{s}/state",
        f"otagw/device/{s}/attributes",
        f"otagw/device/{s}/install",
    )


async def test_install_from_home_assistant_survives_a_broker_outage_and_a_leaving_device(
    broker: Broker, paced_stack: tuple[Stack, Any]
) -> None:
    stack, dev = paced_stack
    rec = stack.record(dev)
    config_t, state_t, attrs_t, install_t = topics_of(rec.device_id)
    mq = integration(stack, broker)
    await mq.start()
    try:
        async with subscriber(broker) as sub:
            await sub.wait_for(lambda: config_t in sub.retained and state_t in sub.retained, what="discovery")
            # every discovery config is one Home Assistant accepts, retained
            configs = {t: p for t, p, _ in sub.messages if t.startswith("homeassistant/") and p}
            assert len(configs) == 4  # the update entity, the adapter, transfers, rollouts
            for topic in configs:
                comp = discovery_topic(topic)
                assert comp is not None and check_discovery(comp[0], sub.json(topic)) == [], topic
            async with subscriber(broker) as late:  # a Home Assistant starting now gets them from the broker
                await late.wait_for(lambda: set(configs) <= set(late.retained), what="retained discovery")
                assert all(r for t, _, r in late.messages if t in configs)
            assert sub.retained["otagw/status"] == b"online"
            state = sub.json(state_t)
            assert check_update_state(state) == []
            assert (state["installed_version"], state["latest_version"], state["in_progress"]) == (
                "0x000001FF",
                "0x00000200",
                False,
            )
            assert "not approved: press Install" in state["release_summary"]

            # Home Assistant's install button
            assert sub.json(config_t)["command_topic"] == install_t
            await sub.publish(install_t, sub.json(config_t)["payload_install"].encode())
            await sub.wait_for(
                lambda: (
                    attrs_t in sub.retained
                    and (sub.json(attrs_t).get("install") or {}).get("result") == "accepted"
                ),
                what="install accepted",
            )
            rollout_id = sub.json(attrs_t)["install"]["rollout_id"]
            assert stack.core.get_rollout(rollout_id) is not None

            def percents() -> list[int]:
                return [
                    s["update_percentage"]
                    for s in sub.history(state_t)
                    if s and s["in_progress"] and s["update_percentage"] is not None
                ]

            # the device downloads; progress reaches Home Assistant, rate-limited
            t0 = stack.clock.monotonic()
            await stack.run_until(lambda: (stack.record(dev).percent or 0) >= 50, max_s=900)
            await sub.wait_for(lambda: len(set(percents())) >= 3, what="progress percentages")
            seen = percents()
            assert seen == sorted(seen) and 0 < max(seen) < 100
            for s in sub.history(state_t):
                assert s is None or check_update_state(s) == []
            # at most one state per state_interval_s (2 s) of clock time while the transfer runs, though the
            # device fetched a block (and the core published progress) every second
            elapsed = stack.clock.monotonic() - t0
            blocks = stack.record(dev).acked_offset // 64
            assert len(seen) <= elapsed / 2 + 2 and len(seen) < blocks * 0.7, (len(seen), elapsed, blocks)

            broker.stop()  # the broker dies mid-transfer, and with it every retained message
        await stack.run_until(lambda: stack.record(dev).state == "updated", max_s=900)
        assert dev.file_version == 0x200
        assert not mq.connected.is_set()
        broker.start()
        # the back-off sleeps at most reconnect_max_s of clock time; then the reconnect is broker I/O
        await stack.clock.advance(mq.cfg.reconnect_max_s)
        await asyncio.wait_for(mq.connected.wait(), 10)
        assert mq.connections == 2

        async with subscriber(broker) as sub:
            # the new broker had nothing: the reconnect republished the final state
            await sub.wait_for(lambda: state_t in sub.retained and config_t in sub.retained, what="republish")
            final = sub.json(state_t)
            assert (final["installed_version"], final["latest_version"], final["in_progress"]) == (
                "0x00000200",
                "0x00000200",
                False,
            )
            assert sub.json(config_t)["device"]["sw_version"] == "0x00000200"
            assert sub.retained["otagw/status"] == b"online"

            # the device leaves the network: its entity goes away (empty retained config)
            stack.app.handle_leave(dev.nwk, dev.ieee)
            await stack.network.settle()
            await sub.wait_for(
                lambda: not {config_t, state_t, attrs_t} & set(sub.retained), what="entity removal"
            )
            assert config_t in [t for t, p, _ in sub.messages if p == b""]
            async with subscriber(broker) as late:  # nothing of the device is left on the broker
                await late.wait_for(lambda: "otagw/status" in late.retained, what="retained status")
                assert not {config_t, state_t, attrs_t} & set(late.retained)
    finally:
        await mq.stop()
    async with subscriber(broker) as sub:
        await sub.wait_for(lambda: "otagw/status" in sub.retained, what="availability")
        assert sub.retained["otagw/status"] == b"offline"


async def test_one_subscriber_sees_available_then_progress_then_updated(
    broker: Broker, tmp_path: Path
) -> None:
    """An operator's rollout, no outage: the whole story on one Home Assistant connection, in order."""
    clock = ManualClock()
    dev = sim_device(2, clock, VENDOR, behaviour=Behaviour(min_block_period_ms=500))
    stack = await make_stack(
        tmp_path / "gw",
        [dev],
        [synthetic(*VENDOR, size=3000)],
        clock=clock,
        join=False,
        policy={"auto_approve": False},
    )
    mq = integration(stack, broker)
    await mq.start()
    try:
        async with subscriber(broker) as sub:
            await stack.network.join_all()  # zigpy interviews it; nothing is approved yet
            await stack.run_until(lambda: stack.record(dev) is not None and stack.record(dev).current_version)
            _, state_t, _, _ = topics_of(stack.record(dev).device_id)
            await sub.wait_for(
                lambda: state_t in sub.retained and sub.json(state_t)["latest_version"] == "0x00000200",
                what="update available",
            )
            image = (await stack.store.list())[0]
            await stack.core.create_rollout(image.image_id, waves=["100%"], soak_s=0)
            await stack.run_until(lambda: stack.record(dev).state == "updated", max_s=900)
            await sub.wait_for(
                lambda: sub.json(state_t)["installed_version"] == "0x00000200", what="updated state"
            )
            states = [s for s in sub.history(state_t) if s]
            assert all(check_update_state(s) == [] for s in states)
            assert (
                states[0]["installed_version"] == "0x000001FF" and states[0]["latest_version"] == "0x00000200"
            )
            assert states[0]["in_progress"] is False
            progress = [s["update_percentage"] for s in states if s["in_progress"]]
            assert len(set(progress)) >= 3 and progress == sorted(progress)
            first_progress = next(i for i, s in enumerate(states) if s["in_progress"])
            assert first_progress > 0
            assert states[-1]["in_progress"] is False and states[-1]["latest_version"] == "0x00000200"
    finally:
        await mq.stop()
        await stack.close()
