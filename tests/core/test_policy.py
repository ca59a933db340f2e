"""Policy: rule folding, version constraints, windows (with zones and DST) and their effect on decisions."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest

from gateway.config import ConfigError, TimeWindow, parse_config
from gateway.core.interface import ApplyAction, Available, Busy, NotAvailable
from gateway.core.policy import Policy, Window, version_matches
from gateway.core.records import DeviceRecord
from gateway.core.states import DeviceState as S
from tests.core.conftest import T0, CoreFactory, make_entry, matter_dev

UTC = dt.UTC


def ts(y: int, mo: int, d: int, h: int, mi: int = 0, tz: str = "UTC") -> float:
    return dt.datetime(y, mo, d, h, mi, tzinfo=ZoneInfo(tz)).timestamp()


@pytest.mark.parametrize(
    ("spec", "numeric", "text", "ok"),
    [
        (3, 3, "x", True),
        (3, 4, "x", False),
        (">=3", 3, "", True),
        (">3", 3, "", False),
        ("<0x10", 15, "", True),
        ("2..4", 4, "", True),
        ("2..4", 5, "", False),
        ("1.2.*", 9, "1.2.7", True),
        ("1.2.*", 9, "1.3", False),
        ("7", 7, "", True),
    ],
)
def test_version_specs(spec, numeric, text, ok) -> None:
    assert version_matches(spec, numeric, text) is ok


def test_rule_folding_later_overrides_blocks_accumulate() -> None:
    cfg = parse_config(
        {
            "policy": {
                "auto_approve": True,
                "rules": [
                    {"name": "all", "block_versions": [5], "require_consent": True},
                    {
                        "name": "lab",
                        "match": {"tags": ["lab"]},
                        "require_consent": False,
                        "block_versions": [">=9"],
                        "pin_version": "2.0",
                    },
                    {"name": "other-vendor", "match": {"vendor_id": "0x1234"}, "auto_approve": False},
                ],
            }
        }
    ).policy
    pol = Policy(cfg)
    rec = DeviceRecord("matter:f:1:0", "matter", "f", "1", 0, T0, T0, vendor_id=0xFFF1, tags=("lab",))
    eff = pol.effective(rec)
    assert eff.rules == ("all", "lab") and eff.block_versions == (5, ">=9") and not eff.require_consent
    assert eff.pin_version == "2.0" and eff.auto_approve
    rec.tags = ()
    eff = pol.effective(rec)
    assert eff.rules == ("all",) and eff.require_consent and eff.pin_version is None


def test_config_errors_name_the_key() -> None:
    with pytest.raises(ConfigError, match=r"policy.rules\[0\].match.vendor_id"):
        parse_config({"policy": {"rules": [{"match": {"vendor_id": "acme"}}]}})
    with pytest.raises(ConfigError, match=r"rules\[0\]\.apply_window: unknown window 'night'"):
        parse_config({"policy": {"rules": [{"apply_window": "night"}]}})
    with pytest.raises(ConfigError, match=r"windows\.n\.start"):
        parse_config({"policy": {"windows": {"n": {"start": "25:00"}}}})
    with pytest.raises(ConfigError, match=r"policy\.budgets\.global"):
        parse_config({"policy": {"budgets": {"global": 0}}})


def test_window_across_midnight_and_days() -> None:
    w = Window("night", TimeWindow(days=["mon", "tue"], start="22:00", end="02:00"), "UTC")
    mon = ts(2024, 1, 1, 23)  # Monday 23:00
    assert w.is_open(mon) and w.is_open(ts(2024, 1, 2, 1, 59)) and not w.is_open(ts(2024, 1, 2, 2))
    assert w.is_open(ts(2024, 1, 3, 1))  # Tuesday's window runs into Wednesday
    assert not w.is_open(ts(2024, 1, 3, 23))  # Wednesday does not open
    assert w.next_open(ts(2024, 1, 3, 12)) == ts(2024, 1, 8, 22)  # next Monday
    assert w.next_open(mon) == mon


def test_window_time_zone_and_dst() -> None:
    w = Window("w", TimeWindow(start="02:30", end="04:00", timezone="Europe/Berlin"), "UTC")
    # 2024-03-31: Berlin skips 02:00-03:00; the window still opens once that night (at 03:30 CEST = 01:30 UTC)
    before = ts(2024, 3, 30, 23, tz="UTC")
    nxt = w.next_open(before)
    assert dt.datetime.fromtimestamp(nxt, UTC) == dt.datetime(2024, 3, 31, 1, 30, tzinfo=UTC)
    # normal night: 02:30 CET = 01:30 UTC in winter, 00:30 UTC in summer
    assert w.next_open(ts(2024, 1, 10, 12)) == ts(2024, 1, 11, 1, 30)
    assert w.next_open(ts(2024, 7, 10, 12)) == ts(2024, 7, 11, 0, 30)


async def test_block_allow_pin_and_downgrade(make_core: CoreFactory, store) -> None:
    core = await make_core(rules=[{"block_versions": [3]}])
    res = await core.query(matter_dev(1))
    assert isinstance(res, Available) and res.image.numeric_version == 2
    core = await make_core(data_dir=None, rules=[{"block_versions": [">=2"]}])
    res = await core.query(matter_dev(7))
    assert (
        isinstance(res, NotAvailable)
        and "policy held back 2" in res.reason
        and "blocked by '>=2'" in res.reason
    )
    core = await make_core(rules=[{"match": {"devices": ["matter:*:0000000000000008:0"]}, "pin_version": 2}])
    res = await core.query(matter_dev(8, version=3))
    assert isinstance(res, NotAvailable) and "downgrade" in res.reason
    core = await make_core(
        rules=[
            {"match": {"devices": ["matter:*:0000000000000009:0"]}, "pin_version": 2, "allow_downgrade": True}
        ]
    )
    res = await core.query(matter_dev(9, version=3))
    assert isinstance(res, Available) and res.image.numeric_version == 2 and "downgrade" in res.reason


async def test_consent_and_auto_approve(make_core: CoreFactory) -> None:
    core = await make_core(
        require_consent=True, rules=[{"name": "hold-lab", "match": {"tags": ["lab"]}, "auto_approve": False}]
    )
    res = await core.query(matter_dev(1))
    assert isinstance(res, Available) and res.consent_needed
    res = await core.query(matter_dev(2, tags=("lab",)))
    assert isinstance(res, NotAvailable)
    # The newest image is named with the command that approves it; approving it offers it to the lab device.
    assert res.reason.startswith("update 3.0 (3) available (added via local), not approved")
    assert "`otagw image approve " in res.reason


async def test_download_window_holds_then_opens(make_core: CoreFactory, clock) -> None:
    # T0 is 22:13 UTC; window 01:00-05:00 UTC
    core = await make_core(windows={"night": {"start": "01:00", "end": "05:00"}}, download_window="night")
    dev = matter_dev(1)
    res = await core.query(dev)
    assert isinstance(res, Busy) and "download window night" in res.reason
    opens = ts(2023, 11, 15, 1)
    assert res.retry_after_s == int(opens - T0) + (1 if (opens - T0) % 1 else 0)
    assert core.get_device(dev.key.device_id).state == S.WAITING_FOR_WINDOW  # type: ignore[union-attr]
    plan = {p.device_id: p for p in core.plan()}
    assert plan[dev.key.device_id].outcome == "later" and plan[dev.key.device_id].when == opens
    await clock.advance(opens - T0 + 1)
    await core.sweep()
    assert core.get_device(dev.key.device_id).state == S.UPDATE_AVAILABLE  # type: ignore[union-attr]
    assert isinstance(await core.query(dev), Available)


async def test_download_now_install_in_window(make_core: CoreFactory, clock) -> None:
    core = await make_core(windows={"night": {"start": "01:00", "end": "05:00"}}, apply_window="night")
    dev = matter_dev(1)
    res = await core.query(dev)
    assert isinstance(res, Available)
    await core.progress(res.token, 0, res.image.size)
    await core.download_complete(res.token)
    dec = await core.apply_request(res.token, 3)
    opens = ts(2023, 11, 15, 1)
    assert dec.action == ApplyAction.PROCEED and dec.apply_at == opens and dec.delay_s == opens - T0
    assert core.get_device(dev.key.device_id).state == S.WAITING_TO_APPLY  # type: ignore[union-attr]
    busy = await core.query(dev)  # the device asking meanwhile is told to wait, not re-offered
    assert isinstance(busy, Busy)
    await clock.advance(opens - T0)
    await core.sweep()
    assert core.get_device(dev.key.device_id).state == S.APPLYING  # type: ignore[union-attr]
    await core.report_version(dev.key, 3)
    assert core.get_device(dev.key.device_id).state == S.UPDATED  # type: ignore[union-attr]


async def test_long_apply_delay_becomes_await_next_action(make_core: CoreFactory) -> None:
    core = await make_core(
        windows={"sun": {"days": ["sun"], "start": "03:00", "end": "04:00"}},
        apply_window="sun",
        max_apply_delay_s=3600,
    )
    res = await core.query(matter_dev(1))
    assert isinstance(res, Available)
    dec = await core.apply_request(res.token, 3)
    assert dec.action == ApplyAction.AWAIT_NEXT_ACTION and dec.delay_s == 3600 and "sun" in dec.reason


async def test_block_added_after_download_discontinues(make_core: CoreFactory, tmp_path) -> None:
    from tests.core.conftest import config

    core = await make_core()
    res = await core.query(matter_dev(1))
    assert isinstance(res, Available)
    core.reload_policy(config(tmp_path, rules=[{"name": "recall", "block_versions": [3]}]))
    dec = await core.apply_request(res.token, 3)
    assert dec.action == ApplyAction.DISCONTINUE and "recall" in dec.reason
    assert core.get_device(matter_dev(1).key.device_id).state == S.CANCELLED  # type: ignore[union-attr]


async def test_zigbee_hw_and_wildcards_via_selection(make_core: CoreFactory, store) -> None:
    store.add(make_entry("zigbee", 0xFFFF, 0xFFFF, 0x20, size=500))
    store.add(make_entry("zigbee", 0x117C, 0x2811, 0x30, size=500, min_hw=2))
    core = await make_core()
    from tests.core.conftest import zigbee_dev

    res = await core.query(zigbee_dev(1, version=0x10, hardware_version=1))
    assert isinstance(res, Available) and res.image.numeric_version == 0x20
    res = await core.query(zigbee_dev(2, version=0x10, hardware_version=3))
    assert isinstance(res, Available) and res.image.numeric_version == 0x30


async def test_repeated_wait_answers_restart_the_never_asked_again_deadline(
    make_core: CoreFactory, clock
) -> None:
    """A device told "ask again later" (AWAIT_NEXT_ACTION) that does ask again on schedule is not failed; the
    "never asked again" deadline (max_apply_delay_s + stale_transfer_s) counts from its latest ask."""
    core = await make_core(
        windows={"sun": {"days": ["sun"], "start": "03:00", "end": "04:00"}},
        apply_window="sun",
        max_apply_delay_s=3600,
        stale_transfer_s=600,
    )
    dev = matter_dev(1)
    res = await core.query(dev)
    assert isinstance(res, Available)
    await core.progress(res.token, 0, res.image.size)
    await core.download_complete(res.token)
    for _ in range(6):  # six hours of waiting, asking again each time it was told to
        dec = await core.apply_request(res.token, 3)
        assert dec.action == ApplyAction.AWAIT_NEXT_ACTION and dec.delay_s == 3600
        await clock.advance(dec.delay_s)
        await core.sweep()
        rec = core.get_device(dev.key.device_id)
        assert rec is not None and rec.state == S.WAITING_TO_APPLY, rec.state_reason
    # it asks once more, then goes silent: failed max_apply_delay_s + stale_transfer_s after that last ask
    await core.apply_request(res.token, 3)
    await clock.advance(3600 + 600 - 1)
    await core.sweep()
    assert core.get_device(dev.key.device_id).state == S.WAITING_TO_APPLY  # type: ignore[union-attr]
    await clock.advance(1)
    await core.sweep()
    rec = core.get_device(dev.key.device_id)
    assert rec is not None and rec.state == S.FAILED and "never asked again" in rec.state_reason
