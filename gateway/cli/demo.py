"""`otagw demo`: the whole gateway on simulated hardware, for a newcomer: dashboard, devices, a rollout in waves.

It runs the real composition root (`gateway.service.Gateway`: store, core, API, dashboard) with the real Zigbee
adapter, taken from its plugin (`gateway.plugins`), on the plugin's hardware-free harness (a fake-radio zigpy
application and simulated OTA client devices running zigpy's real ZCL codec). It builds a firmware image for the
simulated lights, starts a rollout in three waves (1 device, 25 %, everyone) and prints a login link for the
dashboard. Some devices are sleepy, some use Image Page requests, one always fails to install, so the waves show
successes and a failure.

Where it can (root, for network namespaces; Node + matter.js in a checkout's tests/js named by `--matterjs-dir` or
$OTAGW_MATTERJS_DIR; the chip SDK), it also runs the real Matter adapter and 2-3 matter.js OTA requestor devices
(the Matter plugin's harness): two network namespaces of its own joined by a veth (the chip SDK's mDNS skips loopback),
the adapter's provider node, DNS-SD and controller in one, the devices in the other. It commissions them onto the
gateway's fabric and starts a second rollout (a Matter image for their VendorID/ProductID; a rollout carries one
image, so one rollout per protocol) in two waves. Otherwise it prints one line saying why Matter is left out.
Teardown always runs (also on Ctrl-C / SIGTERM): devices killed, gateway stopped, namespaces deleted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import click

from gateway.cli import CliContext, UserError, main
from gateway.plugins import AdapterPlugin, LazyAdapterPlugin, get_plugin

log = logging.getLogger("otagw.demo")

PAN = 0x1A2B
VENDOR, IMAGE_TYPE, OLD, NEW = 0x117C, 0x2811, 0x01000010, 0x01000020  # "IKEA-like" light, v1.0.16 -> v1.0.32
IMAGE_SIZE = 24 * 1024
MATTER_VID, MATTER_PID, MATTER_OLD, MATTER_NEW = 0xFFF1, 0x8000, 1, 2  # the matter.js test device's ids
MATTER_IMAGE_SIZE = 96 * 1024
MATTER_PROVIDER_NODE = 0x0000_0000_0A11_0001


class DemoZigbeeAdapter:
    """The real `ZigbeeAdapter` on a simulated network of `count` lights (an adapter slot for the Gateway)."""

    count = 12

    def __init__(self, config: Any, core: Any, clock: Any, data_dir: Path) -> None:
        from zigpy.zcl import foundation

        plugin = get_plugin(
            "zigbee"
        )  # the gateway package never imports adapters: the registry hands them over
        sim = plugin.simulator()
        ZigbeeAdapter = plugin.adapter_class()
        Behaviour, SimOtaDevice = sim.Behaviour, sim.SimOtaDevice

        self.network = sim.SimNetwork(clock, pan_id=PAN)
        for n in range(self.count):
            behaviour = Behaviour(
                max_data_size=64,
                response_spacing_ms=15,  # a little air time, so progress bars visibly move
                page_mode=n % 4 == 1,
                sleepy=n % 5 == 2,
                query_interval_s=20.0,
                reboot_s=3.0,
                end_status=foundation.Status.INVALID_IMAGE
                if n == self.count - 1
                else foundation.Status.SUCCESS,
            )
            self.network.add(
                SimOtaDevice(
                    f"00:0d:6f:00:00:de:{n >> 8:02x}:{n & 0xFF:02x}",
                    0x2000 + n,
                    clock,
                    manufacturer_code=VENDOR,
                    image_type=IMAGE_TYPE,
                    file_version=OLD,
                    model="DemoLight" if n % 3 else "DemoBulb",
                    behaviour=behaviour,
                    seed=n + 1,
                )
            )
        self.adapter = ZigbeeAdapter(
            config, core, clock, data_dir, app_cls=sim.SimControllerApplication.bound_to(self.network)
        )

    async def start(self) -> None:
        await self.adapter.start()
        self.network.add_idle_hook(self.adapter.is_idle)
        self.network.start()
        await self.network.join_all()

    async def stop(self) -> None:
        await self.adapter.stop()
        await self.network.stop()


class DemoMatterAdapter:
    """The real `MatterAdapter` with its node and controller in namespace A of `pair` (an adapter slot)."""

    pair: Any = None  # the Matter harness's NetnsPair, set by run_demo before the gateway starts

    def __init__(self, config: Any, core: Any, clock: Any, data_dir: Path) -> None:
        MatterAdapter = get_plugin("matter").adapter_class()
        # a demo wants to see waves move: check the plan for nodes to announce to every 2 s, not every 15 s
        config = config.model_copy(update={"announce_check_s": 2.0})
        self.adapter = MatterAdapter(config, core, clock, data_dir, netns=self.pair.a.netns)

    async def start(self) -> None:
        with self.pair.enter(self.pair.a):  # the provider node's UDP and DNS-SD sockets bind in namespace A
            await self.adapter.start()

    async def stop(self) -> None:
        await self.adapter.stop()


def matter_unavailable_reason() -> str | None:
    """Why the demo cannot run Matter devices here (None: it can)."""
    try:
        plugin = get_plugin("matter")
        reason = plugin.unavailable_reason()
        if reason:
            return reason
        sim = plugin.simulator()
    except (ImportError, LookupError) as exc:
        return f"the Matter adapter is not installed ({exc})"
    for reason in (
        sim.netns_unavailable_reason(),
        sim.node_unavailable_reason(),
        sim.runner_unavailable_reason(),
    ):
        if reason:
            return str(reason)
    return None


class MatterDemo:
    """The Matter half: namespaces, matter.js devices, commissioning, the Matter rollout; `close()` undoes it."""

    def __init__(self, work: Path, count: int) -> None:
        self.sim = get_plugin("matter").simulator()
        self.work = work
        self.count = count
        self.pair: Any = None
        self.devices: list[Any] = []
        self.rollout_id: str | None = None
        self.error: str | None = None

    def create_namespaces(self) -> Any:
        self.pair = self.sim.create_pair("demo")
        return self.pair

    def config(self) -> dict[str, Any]:
        paa = self.sim.export_paas(self.work / "paa")
        return {
            "enabled": True,
            "port": 5540,
            "interfaces": [self.pair.a.iface],
            "paa_trust_store": str(paa),
            "node_id": MATTER_PROVIDER_NODE,
        }

    async def run(self, gateway: Any, soak_s: float) -> None:
        """Start and commission the devices one at a time (two open commissioning windows on one address can
        confuse on-network discovery), then start the Matter rollout."""
        from gateway.formats import build_matter_image

        adapter = gateway.adapter("matter")
        if adapter is None or adapter.state != "running":
            self.error = f"Matter adapter {adapter.state if adapter else 'missing'}: {adapter.error if adapter else ''}"
            click.echo(f"Matter devices left out: {self.error}")
            return
        for n in range(self.count):
            dev = self.sim.MatterJsDevice(
                self.pair.b.netns,
                self.work / f"device-{n + 1}",
                port=5540 + n,
                vendor_id=MATTER_VID,
                product_id=MATTER_PID,
                version=MATTER_OLD,
                discriminator=3840 + n,
                passcode=20202021 + n,
            )
            self.devices.append(dev)
            ready = await dev.start()
            got = await adapter.instance.adapter.commission(ready["qrPairingCode"], timeout_s=30)
            log.info("demo: matter.js device %d commissioned as node 0x%X", n + 1, int(got["node_id"]))
        image = build_matter_image(
            bytes(range(256)) * (MATTER_IMAGE_SIZE // 256),
            vendor_id=MATTER_VID,
            product_id=MATTER_PID,
            software_version=MATTER_NEW,
            software_version_string=f"{MATTER_NEW}.0",
        )
        entry = (await gateway.store.add_bytes(image, file_name="demo-matter-2.0.ota", source="demo")).entry
        await gateway.core.catalog_changed()
        rollout = await gateway.core.create_rollout(
            entry.image_id,
            name="demo matter.js 2.0",
            selector={"protocol": "matter"},
            waves=["1", "100%"],
            soak_s=soak_s,
            max_failures=0,
            wave_deadline_s=120,
        )
        self.rollout_id = rollout.rollout_id
        click.echo(
            f"  Matter rollout {rollout.rollout_id} started: {self.count} matter.js devices, waves 1 / 100%"
        )

    async def close(self) -> None:
        for dev in self.devices:
            with contextlib.suppress(Exception):
                await dev.stop()
        if self.pair is not None:
            self.sim.delete_pair(self.pair)
            self.pair = None


def demo_config(data_dir: Path, listen: str, matter: dict[str, Any] | None = None) -> Any:
    from gateway.config import parse_config

    return parse_config(
        {
            "data_dir": str(data_dir),
            "api": {"listen": listen},
            "matter": matter or {"enabled": False},
            "zigbee": {"enabled": True, "notify_interval_s": 5, "reboot_wait_s": 5, "apply_recheck_s": 5},
            # only the rollout updates devices, so the waves are what you watch
            "policy": {"auto_approve": False, "sweep_interval_s": 1, "retry_backoff_s": 3600},
        }
    )


def _states(devices: list[Any], protocol: str) -> dict[str, int]:
    states: dict[str, int] = {}
    for d in devices:
        if d.protocol == protocol:
            states[d.state.value] = states.get(d.state.value, 0) + 1
    return states


async def run_demo(
    data_dir: Path,
    listen: str,
    devices: int,
    soak_s: float,
    exit_when_done: float | None,
    matter_devices: int = 0,
) -> dict[str, Any]:
    """Run the demo; `matter_devices` > 0 adds the Matter half (the caller checked `matter_unavailable_reason`)."""
    import signal

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    matter = MatterDemo(data_dir / "matter-demo", matter_devices) if matter_devices else None
    try:
        matter_cfg = None
        if matter is not None:
            matter.work.mkdir(parents=True, exist_ok=True)
            DemoMatterAdapter.pair = matter.create_namespaces()
            matter_cfg = await asyncio.to_thread(matter.config)
        return await _run_gateway(data_dir, listen, devices, soak_s, exit_when_done, matter, matter_cfg, stop)
    finally:
        if matter is not None:
            await matter.close()


async def _run_gateway(
    data_dir: Path,
    listen: str,
    devices: int,
    soak_s: float,
    exit_when_done: float | None,
    matter: MatterDemo | None,
    matter_cfg: dict[str, Any] | None,
    stop: asyncio.Event,
) -> dict[str, Any]:
    from gateway.formats import build_zigbee_image
    from gateway.service import Gateway

    DemoZigbeeAdapter.count = devices
    plugins: list[AdapterPlugin] = [
        LazyAdapterPlugin("zigbee", "gateway.cli.demo:DemoZigbeeAdapter", config_section="zigbee"),
    ]
    if matter is not None:
        plugins.insert(
            0, LazyAdapterPlugin("matter", "gateway.cli.demo:DemoMatterAdapter", config_section="matter")
        )
    gateway = Gateway(demo_config(data_dir, listen, matter_cfg), plugins=plugins)
    summary: dict[str, Any] = {}
    matter_task: asyncio.Task[None] | None = None
    with get_plugin("zigbee").simulator().fast_zigpy_timing():
        await gateway.start()
        try:
            image = build_zigbee_image(
                bytes(range(256)) * (IMAGE_SIZE // 256),
                manufacturer_code=VENDOR,
                image_type=IMAGE_TYPE,
                file_version=NEW,
                header_string="otagw demo light",
            )
            entry = (
                await gateway.store.add_bytes(image, file_name="demo-light-1.0.32.zigbee", source="demo")
            ).entry
            await gateway.core.catalog_changed()
            await asyncio.sleep(1.0)  # let zigpy interview the joined devices first
            rollout = await gateway.core.create_rollout(
                entry.image_id,
                name="demo light 1.0.32",
                selector={"protocol": "zigbee"},
                waves=["1", "25%", "100%"],
                soak_s=soak_s,
                # wave membership is a per-rollout hash: the light built to fail may be wave 1's only device,
                # and a failure *rate* would then halt the demo in 1 of `devices` runs; one failure is expected
                max_failures=1,
                max_failure_rate=None,
                wave_deadline_s=120,
            )
            if matter is not None:
                matter_line = (
                    f"{matter.count} matter.js requestors in netns {matter.pair.b.netns}, gateway node "
                    f"in {matter.pair.a.netns}; commissioning, then a rollout in waves 1 / 100%"
                )
            else:
                matter_line = "left out (see above)"
            click.echo(
                f"\notagw demo is running\n"
                f"  dashboard:  {gateway.api_url}/login?token={gateway.token}\n"
                f"  devices:    {devices} simulated Zigbee lights on PAN {PAN:04x} (some sleepy, one fails)\n"
                f"  rollout:    {rollout.rollout_id}, waves 1 / 25% / 100%, soak {soak_s:g} s\n"
                f"  Matter:     {matter_line}\n"
                f"  data:       {data_dir}\n"
                f"Ctrl-C stops it.\n"
            )
            if matter is not None:
                matter_task = asyncio.create_task(matter.run(gateway, soak_s), name="demo-matter")
            started = time.monotonic()

            def finished(rollout_id: str | None) -> bool:
                r = gateway.core.get_rollout(rollout_id) if rollout_id else None
                return r is not None and r.status.value in ("completed", "halted", "aborted")

            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=1.0)
                if matter_task is not None and matter_task.done() and not matter_task.cancelled():
                    exc = matter_task.exception()
                    if exc is not None and matter is not None and matter.error is None:
                        matter.error = str(exc) or type(exc).__name__
                        click.echo(f"Matter devices failed: {matter.error}", err=True)
                matter_done = matter is None or matter.error is not None or finished(matter.rollout_id)
                if exit_when_done is not None and (
                    (finished(rollout.rollout_id) and matter_done)
                    or time.monotonic() - started > exit_when_done
                ):
                    break
            # a completed rollout may still have devices rebooting into the new image: let them report back
            settle_until = time.monotonic() + 30
            while (
                exit_when_done is not None
                and not stop.is_set()
                and time.monotonic() < settle_until
                and any(
                    d.state.value in ("querying", "downloading", "downloaded", "applying", "verifying")
                    for d in gateway.core.list_devices()
                )
            ):
                await asyncio.sleep(0.5)
            all_devices = gateway.core.list_devices()
            r = gateway.core.get_rollout(rollout.rollout_id)
            summary = {"rollout": r.status.value if r else None, "states": _states(all_devices, "zigbee")}
            if matter is not None:
                mr = gateway.core.get_rollout(matter.rollout_id) if matter.rollout_id else None
                summary["matter"] = {
                    "rollout": mr.status.value if mr else "not started",
                    "states": _states(all_devices, "matter"),
                    "error": matter.error,
                }
        finally:
            if matter_task is not None and not matter_task.done():
                matter_task.cancel()
                with contextlib.suppress(BaseException):
                    await matter_task
            await gateway.stop()
    return summary


@main.command()
@click.option(
    "--listen",
    default="127.0.0.1:8480",
    show_default=True,
    metavar="HOST:PORT",
    help="Where the dashboard and API listen.",
)
@click.option(
    "--devices",
    default=12,
    show_default=True,
    type=click.IntRange(2, 200),
    help="Number of simulated Zigbee lights.",
)
@click.option(
    "--soak",
    "soak_s",
    default=15.0,
    show_default=True,
    type=click.FloatRange(0, 3600),
    help="Seconds between rollout waves.",
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Keep the demo's data here (default: a temporary directory, removed afterwards).",
)
@click.option(
    "--exit-when-done",
    type=float,
    default=None,
    metavar="SECONDS",
    help="Stop when the rollouts end (or after SECONDS) and print a summary (for scripts and CI).",
)
@click.option(
    "--matter/--no-matter",
    default=True,
    show_default=True,
    help="Also run matter.js devices (needs root for network namespaces, Node + matter.js, the chip SDK).",
)
@click.option(
    "--matter-devices",
    default=3,
    show_default=True,
    type=click.IntRange(1, 3),
    help="Number of simulated Matter (matter.js) devices.",
)
@click.option(
    "--matterjs-dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="OTAGW_MATTERJS_DIR",
    help="A checkout's tests/js with matter.js installed (npm ci): the Matter devices' scripts.",
)
@click.pass_obj
def demo(
    obj: CliContext,
    listen: str,
    devices: int,
    soak_s: float,
    data_dir: Path | None,
    exit_when_done: float | None,
    matter: bool,
    matter_devices: int,
    matterjs_dir: Path | None,
) -> None:
    """Run the gateway with simulated Zigbee (and, where possible, Matter) devices and rollouts in waves; watch
    it on the dashboard."""
    from gateway.config import ConfigError
    from gateway.service import GatewayStartError

    try:
        demo_config(Path("."), listen)
    except ConfigError as exc:
        raise UserError(f"--listen: {exc}") from None
    try:
        get_plugin("zigbee").simulator()
    except (ImportError, LookupError) as exc:
        raise UserError(f"the Zigbee simulator is not available: {exc}") from None
    if matterjs_dir is not None:
        os.environ["OTAGW_MATTERJS_DIR"] = str(matterjs_dir.resolve())  # read by the Matter harness
    reason = "--no-matter given" if not matter else matter_unavailable_reason()
    if reason:
        click.echo(f"Matter devices left out: {reason}")
    with contextlib.ExitStack() as stack:
        if data_dir is None:
            data_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="otagw-demo-")))
        try:
            summary = asyncio.run(
                run_demo(data_dir, listen, devices, soak_s, exit_when_done, 0 if reason else matter_devices)
            )
        except GatewayStartError as exc:
            raise UserError(str(exc)) from None
    if summary:
        states = ", ".join(f"{n} {s}" for s, n in sorted(summary["states"].items()))
        click.echo(f"zigbee rollout {summary['rollout']}; devices: {states}")
        if "matter" in summary:
            m = summary["matter"]
            states = ", ".join(f"{n} {s}" for s, n in sorted(m["states"].items())) or "none"
            click.echo(
                f"matter rollout {m['rollout']}; devices: {states}"
                + (f" ({m['error']})" if m["error"] else "")
            )
