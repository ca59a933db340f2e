"""`otagw demo`: the whole gateway on simulated hardware, for a newcomer: dashboard, devices, a rollout in waves.

It runs the real composition root (`gateway.service.Gateway`: store, core, API, dashboard) with one adapter
slot filled by the real Zigbee adapter on the hardware-free harness (`adapters.zigbee.sim`: a fake-radio zigpy
application and simulated OTA client devices running zigpy's real ZCL codec). It builds a firmware image for the
simulated lights, starts a rollout in three waves (1 device, 25 %, everyone) and prints a login link for the
dashboard. Some devices are sleepy, some use Image Page requests, one always fails to install, so the waves show
successes and a failure. Matter devices are not simulated: the Matter provider has no gateway adapter entry
point yet (see `gateway.service.ADAPTER_SLOTS`).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import click

from gateway.cli import CliContext, UserError, main

log = logging.getLogger("otagw.demo")

PAN = 0x1A2B
VENDOR, IMAGE_TYPE, OLD, NEW = 0x117C, 0x2811, 0x01000010, 0x01000020  # "IKEA-like" light, v1.0.16 -> v1.0.32
IMAGE_SIZE = 24 * 1024


class DemoZigbeeAdapter:
    """The real `ZigbeeAdapter` on a simulated network of `count` lights (an adapter slot for the Gateway)."""

    count = 12

    def __init__(self, config: Any, core: Any, clock: Any, data_dir: Path) -> None:
        from zigpy.zcl import foundation

        from gateway.service import load_adapter_class

        # by import string, like the composition root: the gateway package never imports adapters statically
        sim = importlib.import_module("adapters.zigbee.sim")
        ZigbeeAdapter = load_adapter_class("adapters.zigbee.adapter:ZigbeeAdapter")
        Behaviour, SimOtaDevice = sim.Behaviour, sim.SimOtaDevice

        self.network = sim.SimNetwork(clock, pan_id=PAN)
        for n in range(self.count):
            behaviour = Behaviour(
                max_data_size=64,
                response_spacing_ms=15,            # a little air time, so progress bars visibly move
                page_mode=n % 4 == 1,
                sleepy=n % 5 == 2,
                query_interval_s=20.0,
                reboot_s=3.0,
                end_status=foundation.Status.INVALID_IMAGE if n == self.count - 1 else foundation.Status.SUCCESS,
            )
            self.network.add(SimOtaDevice(
                f"00:0d:6f:00:00:de:{n >> 8:02x}:{n & 0xFF:02x}", 0x2000 + n, clock,
                manufacturer_code=VENDOR, image_type=IMAGE_TYPE, file_version=OLD,
                model="DemoLight" if n % 3 else "DemoBulb", behaviour=behaviour, seed=n + 1,
            ))
        self.adapter = ZigbeeAdapter(config, core, clock, data_dir,
                                     app_cls=sim.SimControllerApplication.bound_to(self.network))

    async def start(self) -> None:
        await self.adapter.start()
        self.network.add_idle_hook(self.adapter.is_idle)
        self.network.start()
        await self.network.join_all()

    async def stop(self) -> None:
        await self.adapter.stop()
        await self.network.stop()


def demo_config(data_dir: Path, listen: str) -> Any:
    from gateway.config import parse_config

    return parse_config({
        "data_dir": str(data_dir),
        "api": {"listen": listen},
        "matter": {"enabled": False},
        "zigbee": {"enabled": True, "notify_interval_s": 5, "reboot_wait_s": 5, "apply_recheck_s": 5},
        # only the rollout updates devices, so the waves are what you watch
        "policy": {"auto_approve": False, "sweep_interval_s": 1, "retry_backoff_s": 3600},
    })


async def run_demo(data_dir: Path, listen: str, devices: int, soak_s: float, exit_when_done: float | None,
                   ) -> dict[str, Any]:
    from gateway.formats import build_zigbee_image
    from gateway.service import AdapterSlot, Gateway

    DemoZigbeeAdapter.count = devices
    slot = AdapterSlot("zigbee", "gateway.cli.demo:DemoZigbeeAdapter", lambda c: True, "zigbee")
    gateway = Gateway(demo_config(data_dir, listen), slots=(slot,))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    import signal

    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    summary: dict[str, Any] = {}
    with importlib.import_module("adapters.zigbee.sim").fast_zigpy_timing():
        await gateway.start()
        try:
            image = build_zigbee_image(bytes(range(256)) * (IMAGE_SIZE // 256), manufacturer_code=VENDOR,
                                       image_type=IMAGE_TYPE, file_version=NEW, header_string="otagw demo light")
            entry = (await gateway.store.add_bytes(image, file_name="demo-light-1.0.32.zigbee",
                                                   source="demo")).entry
            await gateway.core.catalog_changed()
            await asyncio.sleep(1.0)  # let zigpy interview the joined devices first
            rollout = await gateway.core.create_rollout(
                entry.image_id, name="demo light 1.0.32", waves=["1", "25%", "100%"], soak_s=soak_s,
                max_failures=None, max_failure_rate=0.5, wave_deadline_s=120,
            )
            click.echo(
                f"\notagw demo is running\n"
                f"  dashboard:  {gateway.api_url}/login?token={gateway.token}\n"
                f"  devices:    {devices} simulated Zigbee lights on PAN {PAN:04x} (some sleepy, one fails)\n"
                f"  rollout:    {rollout.rollout_id}, waves 1 / 25% / 100%, soak {soak_s:g} s\n"
                f"  Matter:     not simulated (the Matter provider has no gateway adapter yet)\n"
                f"  data:       {data_dir}\n"
                f"Ctrl-C stops it.\n"
            )
            started = time.monotonic()
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=1.0)
                r = gateway.core.get_rollout(rollout.rollout_id)
                if exit_when_done is not None and (
                    (r is not None and r.status.value in ("completed", "halted", "aborted"))
                    or time.monotonic() - started > exit_when_done
                ):
                    break
            # a completed rollout may still have devices rebooting into the new image: let them report back
            settle_until = time.monotonic() + 30
            while exit_when_done is not None and not stop.is_set() and time.monotonic() < settle_until and any(
                d.state.value in ("querying", "downloading", "downloaded", "applying", "verifying")
                for d in gateway.core.list_devices()
            ):
                await asyncio.sleep(0.5)
            r = gateway.core.get_rollout(rollout.rollout_id)
            states: dict[str, int] = {}
            for d in gateway.core.list_devices():
                states[d.state.value] = states.get(d.state.value, 0) + 1
            summary = {"rollout": r.status.value if r else None, "states": states}
        finally:
            await gateway.stop()
    return summary


@main.command()
@click.option("--listen", default="127.0.0.1:8480", show_default=True, metavar="HOST:PORT",
              help="Where the dashboard and API listen.")
@click.option("--devices", default=12, show_default=True, type=click.IntRange(2, 200),
              help="Number of simulated Zigbee lights.")
@click.option("--soak", "soak_s", default=15.0, show_default=True, type=click.FloatRange(0, 3600),
              help="Seconds between rollout waves.")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Keep the demo's data here (default: a temporary directory, removed afterwards).")
@click.option("--exit-when-done", type=float, default=None, metavar="SECONDS",
              help="Stop when the rollout ends (or after SECONDS) and print a summary (for scripts and CI).")
@click.pass_obj
def demo(obj: CliContext, listen: str, devices: int, soak_s: float, data_dir: Path | None,
         exit_when_done: float | None) -> None:
    """Run the gateway with simulated Zigbee devices and a rollout in waves; watch it on the dashboard."""
    from gateway.config import ConfigError
    from gateway.service import GatewayStartError

    try:
        demo_config(Path("."), listen)
    except ConfigError as exc:
        raise UserError(f"--listen: {exc}") from None
    try:
        importlib.import_module("adapters.zigbee.sim")
    except ImportError as exc:
        raise UserError(f"the Zigbee simulator is not available: {exc}") from None
    with contextlib.ExitStack() as stack:
        if data_dir is None:
            data_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="otagw-demo-")))
        try:
            summary = asyncio.run(run_demo(data_dir, listen, devices, soak_s, exit_when_done))
        except GatewayStartError as exc:
            raise UserError(str(exc)) from None
    if summary:
        states = ", ".join(f"{n} {s}" for s, n in sorted(summary["states"].items()))
        click.echo(f"rollout {summary['rollout']}; devices: {states}")
