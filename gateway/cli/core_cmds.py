"""`otagw devices list|show|rename`, `otagw plan` and `otagw rollout create|list|show|pause|resume|abort`.

Thin click layer over `gateway.core.service.UpdateCore` in its "client" role: it opens the configured data_dir's
state.db (shared with a running gateway through WAL) and the image catalog, reads, and writes only rollout
commands; a running gateway applies those to its devices within about a second. Core errors become a one-line
`UserError` (exit 2).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import click

from gateway.cli import CliContext, UserError, devices, main, rollout
from gateway.clock import SystemClock
from gateway.core.plan import render_plan
from gateway.core.records import DeviceRecord, StateDBError
from gateway.core.rollouts import Rollout, RolloutError
from gateway.core.service import UpdateCore
from gateway.store.errors import StoreError
from gateway.store.store import ImageStore

_T = TypeVar("_T")
_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*")


def _run(ctx: click.Context, op: Callable[[UpdateCore], Awaitable[_T]]) -> _T:
    cli: CliContext = ctx.obj
    cfg = cli.config

    async def go() -> _T:
        store = ImageStore(cfg.data_dir)
        await store.open()
        core = UpdateCore(cfg, store, SystemClock(), role="client", auto_sweep=False)
        try:
            await core.start()
            return await op(core)
        finally:
            await core.stop()
            await store.close()

    try:
        return asyncio.run(go())
    except (RolloutError, StoreError, StateDBError) as exc:
        raise UserError(str(exc)) from None
    except OSError as exc:
        raise UserError(f"{cfg.data_dir}: {exc.strerror or exc}") from None


def _store(core: UpdateCore) -> ImageStore:
    assert isinstance(core.store, ImageStore)  # _run builds the core on the real store
    return core.store


def _duration(text: str) -> float:
    m = _DURATION.fullmatch(text)
    if not m:
        raise click.BadParameter(f"{text!r}: expected seconds or a duration like 30m, 2h, 1d")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


def _ts(t: float | None) -> str:
    return "-" if t is None else dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [
        max(len(header[i]), *(len(r[i]) for r in rows)) if rows else len(header[i])
        for i in range(len(header))
    ]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)


def _version(rec: DeviceRecord) -> str:
    if rec.current_version is None:
        return "-"
    return rec.current_version_string or str(rec.current_version)


# ------------------------------------------------------------------------------------------- devices
@devices.command("list")
@click.option("--json", "as_json", is_flag=True, help="JSON instead of a table.")
@click.option("--state", help="Only devices in this state (e.g. downloading, failed).")
@click.option("--protocol", type=click.Choice(["matter", "zigbee"]), help="Only this protocol.")
@click.pass_context
def devices_list(ctx: click.Context, as_json: bool, state: str | None, protocol: str | None) -> None:
    """Device update records."""
    filters: dict[str, Any] = {}
    if state:
        filters["state"] = state
    if protocol:
        filters["protocol"] = protocol

    async def op(core: UpdateCore) -> list[DeviceRecord]:
        return core.list_devices(filters)

    recs = _run(ctx, op)
    if as_json:
        click.echo(json.dumps([r.to_dict() for r in recs], indent=2))
        return
    rows = [
        [
            r.device_id,
            r.state.value,
            _version(r),
            f"{r.target_version_string or r.target_version}" if r.target_version is not None else "-",
            f"{r.percent}%"
            if r.percent is not None and r.state.value in ("querying", "downloading")
            else "-",
            _ts(r.last_seen),
            (r.last_error or r.state_reason)[:80],
        ]
        for r in recs
    ]
    click.echo(_table(rows, ["DEVICE", "STATE", "VERSION", "TARGET", "DONE", "LAST SEEN (UTC)", "REASON"]))


def _find_device(core: UpdateCore, ref: str) -> DeviceRecord:
    rec = core.get_device(ref)
    if rec is not None:
        return rec
    found = [r for r in core.list_devices() if ref.lower() in r.device_id.lower()]
    if not found:
        raise UserError(f"no device matching {ref!r} (see `otagw devices list`)")
    if len(found) > 1:
        raise UserError(
            f"{ref!r} matches {len(found)} devices ({', '.join(r.device_id for r in found[:4])}...)"
        )
    return found[0]


@devices.command("retry")
@click.argument("device_id")
@click.pass_context
def devices_retry(ctx: click.Context, device_id: str) -> None:
    """Offer a parked device its failed image again (it came back on its old version, or failed
    policy.max_attempts times); resets its attempts and back-off. DEVICE_ID may be a unique part of the id."""

    async def op(core: UpdateCore) -> DeviceRecord:
        rec = _find_device(core, device_id)
        return await core.retry_device(rec.device_id, by="cli")

    rec = _run(ctx, op)
    click.echo(f"{rec.device_id}: may be offered its update again at its next query")


@devices.command("show")
@click.argument("device_id")
@click.option("--json", "as_json", is_flag=True, help="JSON instead of text.")
@click.option("--limit", type=int, default=50, show_default=True, help="History rows (newest).")
@click.pass_context
def devices_show(ctx: click.Context, device_id: str, as_json: bool, limit: int) -> None:
    """One device record and its transition history (DEVICE_ID may be a unique part of the id)."""

    async def op(core: UpdateCore) -> tuple[DeviceRecord, list[Any]]:
        rec = _find_device(core, device_id)
        return rec, await core.history(rec.device_id, limit)

    rec, hist = _run(ctx, op)
    if as_json:
        click.echo(json.dumps({"device": rec.to_dict(), "history": [h.to_dict() for h in hist]}, indent=2))
        return
    for k, v in rec.to_dict().items():
        if v not in (None, "", [], {}):
            shown = (
                _ts(v)
                if k
                in (
                    "first_seen",
                    "last_seen",
                    "last_query",
                    "state_since",
                    "apply_at",
                    "verify_deadline",
                    "last_progress_at",
                    "token_issued_at",
                    "next_retry_at",
                )
                else v
            )
            click.echo(f"{k:>24}: {shown}")
    click.echo("\nhistory:")
    rows = [[_ts(h.at), h.old_state or "-", h.new_state, h.reason] for h in hist]
    click.echo(_table(rows, ["AT (UTC)", "FROM", "TO", "REASON"]))


@devices.command("rename")
@click.argument("device_id")
@click.argument("name")
@click.pass_context
def devices_rename(ctx: click.Context, device_id: str, name: str) -> None:
    """Give a device a name ("" clears it); a running gateway shows it within a second."""
    name = name.strip()
    if len(name) > 64 or any(ord(c) < 32 for c in name):
        raise UserError("NAME must be at most 64 printable characters")

    async def op(core: UpdateCore) -> DeviceRecord:
        rec = _find_device(core, device_id)
        return await core.set_overrides(rec.device_id, name=name or None)

    rec = _run(ctx, op)
    click.echo(f"{rec.device_id}: " + (f"named {rec.name!r}" if rec.name else "name cleared"))


# ---------------------------------------------------------------------------------------------- plan
@main.command("plan")
@click.option("--json", "as_json", is_flag=True, help="JSON instead of a table.")
@click.pass_context
def plan_cmd(ctx: click.Context, as_json: bool) -> None:
    """Dry run: for each device what it would get, when, and why not. Changes nothing."""

    async def op(core: UpdateCore) -> tuple[list[Any], float]:
        return core.plan(), core.clock.now()

    items, now = _run(ctx, op)
    if as_json:
        click.echo(json.dumps([i.to_dict() for i in items], indent=2))
    else:
        click.echo(render_plan(items, now))


# ------------------------------------------------------------------------------------------- rollout
def _rollout_rows(rs: list[Rollout]) -> str:
    rows = [
        [
            r.rollout_id,
            r.status.value,
            r.image_id,
            r.version_string,
            f"{r.current_wave + 1}/{len(r.waves)}",
            " ".join(str(w) for w in r.waves),
            r.name,
        ]
        for r in rs
    ]
    return _table(rows, ["ID", "STATUS", "IMAGE", "VERSION", "WAVE", "WAVES", "NAME"])


@rollout.command("create")
@click.argument("image")
@click.option(
    "--wave",
    "waves",
    multiple=True,
    help="Cumulative wave size: a count (1) or a share (10%). Repeat; default 1 10% 50% 100%.",
)
@click.option("--soak", default="1h", show_default=True, help="Wait after a wave is done (30m, 2h, 1d).")
@click.option(
    "--max-failures", type=int, default=0, show_default=True, help="Halt when a wave has more failures."
)
@click.option("--max-failure-rate", type=float, help="Halt when a wave's failed/offered exceeds this (0..1).")
@click.option("--wave-deadline", default="1d", show_default=True, help="A wave counts as done after this.")
@click.option("--name", help="A label for the rollout.")
@click.option("--protocol", type=click.Choice(["matter", "zigbee"]))
@click.option(
    "--vendor-id", "vendor_ids", multiple=True, help="Vendor id / manufacturer code (0x117C or 4476)."
)
@click.option("--product-id", "product_ids", multiple=True, help="Product id / image type.")
@click.option("--model", "models", multiple=True, help="Model pattern (TRADFRI*).")
@click.option("--device", "device_ids", multiple=True, help="Device id pattern.")
@click.option("--network", "networks", multiple=True, help="Network (pan:1a2b, fabric:<id>).")
@click.option("--tag", "tags", multiple=True, help="Required device tag.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def rollout_create(
    ctx: click.Context,
    image: str,
    waves: tuple[str, ...],
    soak: str,
    max_failures: int,
    max_failure_rate: float | None,
    wave_deadline: str,
    name: str | None,
    protocol: str | None,
    vendor_ids: tuple[str, ...],
    product_ids: tuple[str, ...],
    models: tuple[str, ...],
    device_ids: tuple[str, ...],
    networks: tuple[str, ...],
    tags: tuple[str, ...],
    as_json: bool,
) -> None:
    """Start a staged rollout of catalog IMAGE (id or sha256 prefix); wave 1 opens at once."""
    selector: dict[str, Any] = {
        k: list(v)
        for k, v in (
            ("vendor_id", vendor_ids),
            ("product_id", product_ids),
            ("model", models),
            ("devices", device_ids),
            ("networks", networks),
            ("tags", tags),
        )
        if v
    }
    if protocol:
        selector["protocol"] = protocol
    soak_s, deadline_s = _duration(soak), _duration(wave_deadline)

    async def op(core: UpdateCore) -> Rollout:
        r = await core.create_rollout(
            image,
            selector=selector,
            waves=list(waves) or ["1", "10%", "50%", "100%"],
            soak_s=soak_s,
            max_failures=max_failures,
            max_failure_rate=max_failure_rate,
            wave_deadline_s=deadline_s,
            name=name,
        )
        # A rollout is an approval for its own devices: they keep the image after it completes.
        await _store(core).approve_for_rollout(r.image_id, r.selector, r.rollout_id)
        return r

    r = _run(ctx, op)
    click.echo(
        json.dumps(r.to_dict(), indent=2)
        if as_json
        else f"created rollout {r.rollout_id}\n" + _rollout_rows([r])
    )


@rollout.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def rollout_list(ctx: click.Context, as_json: bool) -> None:
    """All rollouts."""

    async def op(core: UpdateCore) -> list[Rollout]:
        return core.list_rollouts()

    rs = _run(ctx, op)
    click.echo(json.dumps([r.to_dict() for r in rs], indent=2) if as_json else _rollout_rows(rs))


@rollout.command("show")
@click.argument("rollout_id")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def rollout_show(ctx: click.Context, rollout_id: str, as_json: bool) -> None:
    """One rollout: settings, per-wave progress and its event log."""

    async def op(core: UpdateCore) -> dict[str, Any]:
        r = core.get_rollout(rollout_id)
        if r is None:
            raise RolloutError(f"no rollout {rollout_id!r} (see `otagw rollout list`)")
        return {
            **r.to_dict(),
            "waves_progress": core.rollout_progress(rollout_id),
            "events": await core.rollout_events(rollout_id),
        }

    d = _run(ctx, op)
    if as_json:
        click.echo(json.dumps(d, indent=2))
        return
    for k in (
        "rollout_id",
        "name",
        "status",
        "status_reason",
        "image_id",
        "version_string",
        "selector_text",
        "soak_s",
        "max_failures",
        "max_failure_rate",
        "wave_deadline_s",
    ):
        click.echo(f"{k:>16}: {d[k]}")
    click.echo(
        f"{'current wave':>16}: {d['current_wave'] + 1} of {len(d['waves'])} (opened {_ts(d['wave_opened_at'])})"
    )
    rows = [
        [
            str(p["wave"] + 1),
            d["waves"][p["wave"]],
            str(p["members"]),
            str(p["offered"]),
            str(p["updated"]),
            str(p["failed"]),
            str(p["in_progress"]),
        ]
        for p in d["waves_progress"]
    ]
    click.echo(
        "\n" + _table(rows, ["WAVE", "SIZE", "MEMBERS", "OFFERED", "UPDATED", "FAILED", "IN PROGRESS"])
    )
    click.echo(
        "\n"
        + _table(
            [[_ts(e["at"]), e["event"], e["reason"]] for e in d["events"]], ["AT (UTC)", "EVENT", "REASON"]
        )
    )


def _command(name: str, verb: str, past: str) -> None:
    @rollout.command(name, help=f"{verb} a rollout (a running gateway applies it within a second).")
    @click.argument("rollout_id")
    @click.option("--reason", default=None, help="Recorded in the rollout's log.")
    @click.pass_context
    def cmd(ctx: click.Context, rollout_id: str, reason: str | None) -> None:
        async def op(core: UpdateCore) -> Rollout:
            fn = getattr(core, f"{name}_rollout")
            r: Rollout = await fn(rollout_id, reason or f"{past} by operator (CLI)")
            if name == "abort":
                await _store(core).revoke_approval_of(
                    r.image_id, f"rollout {r.rollout_id}", by=f"rollout {r.rollout_id} aborted"
                )
            return r

        r = _run(ctx, op)
        click.echo(f"rollout {r.rollout_id} is {r.status.value}")


for _name, _verb, _past in (
    ("pause", "Pause", "paused"),
    ("resume", "Resume", "resumed"),
    ("abort", "Abort", "aborted"),
):
    _command(_name, _verb, _past)
