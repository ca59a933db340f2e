"""The dry-run plan: one row per device saying what it would get, when, and why (or why not).

`UpdateCore.plan()` computes the rows with the same decision code that answers devices, without changing any
state; this module holds the row type and its text rendering for `otagw plan`.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass
from typing import Any

from gateway.core.records import DeviceRecord


@dataclass(frozen=True, slots=True)
class PlanItem:
    device_id: str
    state: str
    current_version: int | None
    current_version_string: str | None
    outcome: str  # "update" (now), "later" (window/back-off/rollout paused), "in_progress",
    #                               "none" (nothing to offer, see reason), "left" (device left the network)
    image_id: str | None
    version_string: str | None
    when: float | None  # epoch seconds; None when unknown or never
    reason: str

    @classmethod
    def of(
        cls,
        rec: DeviceRecord,
        outcome: str,
        image_id: str | None,
        when: float | None,
        reason: str,
        version_string: str | None = None,
    ) -> PlanItem:
        return cls(
            rec.device_id,
            rec.state.value,
            rec.current_version,
            rec.current_version_string,
            outcome,
            image_id,
            version_string,
            when,
            reason,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def format_when(when: float | None, now: float) -> str:
    if when is None:
        return "-"
    if when <= now + 1:
        return "now"
    return dt.datetime.fromtimestamp(when, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def render_plan(items: list[PlanItem], now: float) -> str:
    """A fixed-width table for terminals."""
    rows = [("DEVICE", "STATE", "VERSION", "PLAN", "IMAGE", "WHEN", "WHY")]
    for it in items:
        rows.append(
            (
                it.device_id,
                it.state,
                it.current_version_string or str(it.current_version or "-"),
                it.outcome,
                f"{it.image_id} ({it.version_string})" if it.image_id else "-",
                format_when(it.when, now),
                it.reason,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(6)]
    return "\n".join("  ".join(c.ljust(widths[i]) for i, c in enumerate(r[:6])) + "  " + r[6] for r in rows)
