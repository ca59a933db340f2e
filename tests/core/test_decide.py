"""The pure decision function on its own: tables of (record, catalog, policy, rollout cover, now) -> outcome, reason.

No core, no database, no clock: `decide` is a function, so each row states its inputs and the expected answer."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import pytest

from gateway.config import parse_config
from gateway.core.decide import CatalogView, Decision, RolloutCover, decide
from gateway.core.policy import Policy
from gateway.core.records import DeviceRecord
from gateway.core.rollouts import RolloutStatus
from gateway.core.states import DeviceState as S
from gateway.store.model import CatalogEntry
from gateway.store.selection import SelectionIndex
from tests.core.conftest import T0, make_entry

V2 = make_entry(version=2)
V3 = make_entry(version=3, size=20_000)
V4_BAD = make_entry(version=4, valid=False)


def rec(**kw: Any) -> DeviceRecord:
    base: dict[str, Any] = dict(
        device_id="matter:fabric:aa:0000000000000001:0",
        protocol="matter",
        network="fabric:aa",
        address="0000000000000001",
        endpoint=0,
        first_seen=T0,
        last_seen=T0,
        vendor_id=0xFFF1,
        product_id=0x8001,
        current_version=1,
    )
    base.update(kw)
    return DeviceRecord(**base)


def cover(**kw: Any) -> RolloutCover:
    base: dict[str, Any] = dict(
        rollout_id="r1",
        name="fw 3.0",
        image_id=V3.image_id,
        status=RolloutStatus.ACTIVE,
        status_reason="",
        current_wave=0,
        wave=0,
        soak_remaining_s=None,
    )
    base.update(kw)
    return RolloutCover(**base)


@dataclass
class Row:
    name: str
    record: DeviceRecord = field(default_factory=rec)
    entries: tuple[CatalogEntry, ...] = (V2, V3)
    policy: dict[str, Any] = field(default_factory=dict)
    cover: RolloutCover | None = None
    installed: list[str] | None = None
    now: float = T0
    outcome: str = "available"
    image: CatalogEntry | None = None
    reason: str = ""  # a fragment the reason must contain
    hold: S | None = None
    retry: float | None = None


# 2023-11-14 22:13:20 UTC is T0: a window 01:00-05:00 UTC is closed then and opens in 2h46m40s
NIGHT = {
    "windows": {"night": {"start": "01:00", "end": "05:00", "timezone": "UTC"}},
    "download_window": "night",
}

ROWS = [
    Row("auto-approve picks the newest", image=V3, reason="3.0"),
    Row("no ids yet", record=rec(vendor_id=None), outcome="not_available", reason="vendor and product ids"),
    Row(
        "no version yet", record=rec(current_version=None), outcome="not_available", reason="current version"
    ),
    Row("up to date", record=rec(current_version=3), outcome="not_available"),
    Row("invalid image never offered", entries=(V4_BAD,), outcome="not_available", reason="invalid"),
    Row("invalid newest: the next good one", entries=(V2, V4_BAD), image=V2),
    Row(
        "auto-approve off, no rollout",
        policy={"auto_approve": False},
        outcome="not_available",
        reason="not approved",
    ),
    Row(
        "auto-approve off, approved image offered",
        policy={"auto_approve": False},
        entries=(replace(V3, approval="approved"),),
        image=V3,
    ),
    Row(
        "blocked version held back by policy",
        policy={"rules": [{"block_versions": [3]}]},
        image=V2,
    ),
    Row(
        "already installed package",
        installed=[V3.package_id],
        outcome="not_available",
        reason="already installed",
    ),
    Row(
        "back-off after a failure of the same image",
        record=rec(next_retry_at=T0 + 50, target_image_id=V3.image_id, failures=1, last_error="boom"),
        outcome="busy",
        image=V3,
        reason="retrying after 1 failed attempt(s) (last: boom)",
        retry=50,
    ),
    Row(
        "back-off is per image",
        record=rec(next_retry_at=T0 + 50, target_image_id=V2.image_id, failures=1),
        image=V3,
    ),
    Row(
        "download window closed",
        policy=NIGHT,
        outcome="busy",
        image=V3,
        reason="download window",
        hold=S.WAITING_FOR_WINDOW,
        retry=2 * 3600 + 46 * 60 + 40,
    ),
    Row("download window open", policy=NIGHT, now=T0 + 3 * 3600, image=V3),
    Row(
        "rollout decides the image",
        cover=cover(image_id=V2.image_id),
        image=V2,
        reason="rollout r1 (fw 3.0) wave 1",
    ),
    Row(
        "rollout image gone from the catalog",
        cover=cover(image_id="0" * 16),
        outcome="not_available",
        reason="no longer in the catalog",
    ),
    Row(
        "device in none of the waves",
        cover=cover(wave=None),
        outcome="not_available",
        reason="none of its waves",
    ),
    Row(
        "rollout paused: hold update_available",
        cover=cover(status=RolloutStatus.PAUSED, status_reason="by operator"),
        outcome="busy",
        image=V3,
        reason="is paused: by operator",
        hold=S.UPDATE_AVAILABLE,
    ),
    Row(
        "later wave while soaking: retry when the soak ends",
        cover=cover(wave=1, soak_remaining_s=600.0),
        outcome="not_available",
        reason="(next wave in 600 s)",
        retry=600,
    ),
    Row(
        "two waves ahead: the callback interval",
        cover=cover(wave=2, soak_remaining_s=600.0),
        outcome="not_available",
        reason="device is in wave 3, wave 1 is open",
    ),
    Row(
        "rollout of a downgrade refused",
        record=rec(current_version=3),
        cover=cover(image_id=V2.image_id),
        outcome="not_available",
        reason="rollout r1",
    ),
    Row(
        "policy applies inside a rollout",
        policy={"rules": [{"block_versions": [3]}]},
        cover=cover(),
        outcome="not_available",
        reason="rollout r1 (fw 3.0): ",
    ),
]


def run(row: Row) -> Decision:
    # the table's rows are about selection: images are offered without approval unless a row turns that off
    cfg = parse_config({"data_dir": "/nonexistent", "policy": {"auto_approve": True, **row.policy}}).policy
    pol = Policy(cfg)
    eff = pol.effective(row.record)
    view = CatalogView({e.image_id: e for e in row.entries}, SelectionIndex.build(row.entries))
    return decide(
        row.record,
        view,
        eff,
        row.cover,
        row.now,
        policy=cfg,
        download_window=pol.window(eff.download_window),
        installed=row.installed,
    )


@pytest.mark.parametrize("row", ROWS, ids=[r.name for r in ROWS])
def test_decision_table(row: Row) -> None:
    d = run(row)
    assert d.outcome == row.outcome, d.reason
    assert row.reason in d.reason
    if row.image is not None:
        assert d.image is not None and d.image.image_id == row.image.image_id
    if row.outcome == "available":
        assert d.when == row.now
    if row.hold is not None:
        assert d.hold == row.hold
    if row.retry is not None:
        assert d.retry_after_s == pytest.approx(row.retry)


@pytest.mark.parametrize("row", ROWS, ids=[r.name for r in ROWS])
def test_decide_is_pure(row: Row) -> None:
    """Same inputs, same answer; the record is not touched."""
    before = replace(row.record)
    assert run(row) == run(row)
    assert row.record == before
