"""Home Assistant over MQTT: how fast a (re)connection republishes a fleet through a real broker.

Starts Debian's mosquitto on a free loopback port, builds the bridge for N devices (discovery config, state and
attributes each: 3 retained topics per device) and publishes `Bridge.connected_now()` through aiomqtt with QoS 1
the way otagw does (`MqttIntegration._send`: one publish at a time, each acknowledged), then the alternative it
rejected (windows of 8 publishes gathered). Prints build time, topics/s and the ratio.

    python bench/bench_mqtt.py [--devices 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiomqtt

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway.config import PolicyConfig
from gateway.core.policy import Policy
from gateway.core.records import DeviceRecord
from gateway.integrations.mqtt.bridge import Bridge, Publish
from gateway.integrations.mqtt.client import MqttIntegration
from gateway.integrations.mqtt.discovery import GatewayIdentity, Topics
from gateway.integrations.mqtt.view import Catalog, device_view


def fleet(n: int) -> list[Publish]:
    bridge = Bridge(Topics(), GatewayIdentity("bench"))
    policy = Policy(PolicyConfig())
    catalog = Catalog.of(())
    for i in range(n):
        ieee = ":".join(f"{b:02x}" for b in i.to_bytes(8, "big"))
        rec = DeviceRecord(
            device_id=f"zigbee:pan:1a2b:{ieee}:1",
            protocol="zigbee",
            network="pan:1a2b",
            address=ieee,
            endpoint=1,
            first_seen=0.0,
            last_seen=0.0,
            vendor_id=0x117C,
            product_id=0x2811,
            model="Light",
            current_version=0x100,
        )
        bridge.set_device(device_view(rec, catalog, policy), 0.0)
    return bridge.connected_now(0.0)


async def publish(port: int, pubs: list[Publish], window: int) -> float:
    quiet = logging.getLogger("bench.aiomqtt")
    quiet.setLevel(logging.ERROR)  # aiomqtt warns per call past ten pending publishes
    async with aiomqtt.Client("127.0.0.1", port, identifier=f"bench-{window}", logger=quiet) as c:
        start = time.perf_counter()
        if window == 1:
            mq = MqttIntegration.__new__(MqttIntegration)  # otagw's own send path, nothing else of it
            await mq._send(c, pubs)
        else:
            for i in range(0, len(pubs), window):
                await asyncio.gather(
                    *(c.publish(p.topic, p.payload, qos=1, retain=True) for p in pubs[i : i + window])
                )
        return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, default=2000)
    args = ap.parse_args()
    mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        conf = Path(tmp) / "m.conf"
        conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
        conf.chmod(0o644)
        proc = subprocess.Popen([mosquitto, "-c", str(conf)], stderr=subprocess.DEVNULL)
        try:
            for _ in range(500):
                with socket.socket() as s:
                    if s.connect_ex(("127.0.0.1", port)) == 0:
                        break
                time.sleep(0.01)
            t0 = time.perf_counter()
            pubs = fleet(args.devices)
            build = time.perf_counter() - t0
            asyncio.run(
                publish(port, pubs, 1)
            )  # warm-up: the broker's retained store holds the fleet from here on
            ours = asyncio.run(publish(port, pubs, 1))
            windowed = asyncio.run(publish(port, pubs, 8))
        finally:
            proc.terminate()
            proc.wait()
    n = len(pubs)
    print(
        f"fleet: {args.devices} devices, {n} retained topics ({sum(len(p.payload) for p in pubs) / 1e6:.1f} MB)"
    )
    print(f"building views and payloads: {build:.2f} s ({args.devices / build:,.0f} devices/s)")
    print(f"otagw republish (one at a time): {ours:.2f} s, {n / ours:,.0f} topics/s")
    print(f"gathered windows of 8 (rejected): {windowed:.2f} s, {n / windowed:,.0f} topics/s")
    print(f"ratio: otagw's path is {windowed / ours:.1f}x the speed of gathered windows")


if __name__ == "__main__":
    main()
