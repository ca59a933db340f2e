"""Update policy from the config: rule matching, version constraints, time windows and concurrency budgets.

Pure and synchronous: everything here is a function of the `PolicyConfig`, a device record and a time, so the
service can re-evaluate it on every decision and `reload_policy` can swap it atomically.

- `Policy.effective(record)` folds the matching rules (file order; later keys override, `block_versions`
  accumulate) over the section defaults into an `EffectivePolicy`, remembering which rules matched (for reasons).
- `version_permitted(eff, entry)` says whether policy lets an image be offered, and why not.
- `Window` answers "is it open at t" and "when does it next open" in the window's own time zone (zoneinfo, so DST
  is handled by the zone data, not by arithmetic).
- `BudgetTracker` counts transfer slots globally, per protocol and per network, and gives routers / mains-powered
  devices priority over sleepy end devices: while a non-sleepy device is waiting for a slot in a scope, sleepy
  devices in that scope are not admitted.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo

from gateway.config import PolicyConfig, PolicySelector, TimeWindow, VersionSpec
from gateway.core.records import DeviceRecord
from gateway.store.model import CatalogEntry

_DAY_INDEX = {"mon": 0, "tue": 1, "wed": 2, "thu": 3, "fri": 4, "sat": 5, "sun": 6}
_CMP = re.compile(r"\s*(>=|<=|==|>|<)\s*(0[xX][0-9a-fA-F]+|\d+)\s*")
_RANGE = re.compile(r"\s*(0[xX][0-9a-fA-F]+|\d+)\s*\.\.\s*(0[xX][0-9a-fA-F]+|\d+)\s*")


# ------------------------------------------------------------------------------------------- selectors
def selector_matches(sel: PolicySelector, rec: DeviceRecord) -> bool:
    """True when every key set in `sel` matches the device (a list matches any item; tags need all)."""
    if sel.protocol is not None and sel.protocol != rec.protocol:
        return False
    if sel.vendor_id is not None and rec.vendor_id not in sel.vendor_id:
        return False
    if sel.product_id is not None and rec.product_id not in sel.product_id:
        return False
    if sel.model is not None and (
        rec.model is None or not any(fnmatch.fnmatchcase(rec.model, p) for p in sel.model)
    ):
        return False
    if sel.devices is not None and not any(fnmatch.fnmatchcase(rec.device_id, p) for p in sel.devices):
        return False
    if sel.networks is not None and not any(fnmatch.fnmatchcase(rec.network, p) for p in sel.networks):
        return False
    return sel.tags is None or all(t in rec.tags for t in sel.tags)


def selector_is_empty(sel: PolicySelector) -> bool:
    return all(getattr(sel, name) is None for name in PolicySelector.model_fields)


def describe_selector(sel: PolicySelector) -> str:
    parts = [f"{k}={v}" for k, v in sel.model_dump(exclude_none=True).items()]
    return ", ".join(parts) or "all devices"


# -------------------------------------------------------------------------------------------- versions
def version_matches(spec: VersionSpec, numeric: int, text: str) -> bool:
    """Does a version spec (see PolicyRule) match an image's numeric version / version string?"""
    if isinstance(spec, int):
        return numeric == spec
    m = _CMP.fullmatch(spec)
    if m:
        op, n = m.group(1), int(m.group(2), 0)
        return {
            ">=": numeric >= n,
            "<=": numeric <= n,
            "==": numeric == n,
            ">": numeric > n,
            "<": numeric < n,
        }[op]
    m = _RANGE.fullmatch(spec)
    if m:
        return int(m.group(1), 0) <= numeric <= int(m.group(2), 0)
    if spec.isdigit():
        return numeric == int(spec)
    return fnmatch.fnmatchcase(text, spec)


@dataclass(frozen=True, slots=True)
class EffectivePolicy:
    """The policy for one device after folding all matching rules."""

    allow_versions: tuple[VersionSpec, ...] | None
    block_versions: tuple[VersionSpec, ...]
    pin_version: VersionSpec | None
    allow_downgrade: bool
    require_consent: bool
    auto_approve: bool
    download_window: str | None
    apply_window: str | None
    rules: tuple[str, ...] = ()  # names of the rules that matched, for reasons
    allow_unvalidated_payload: bool = True  # offer payloads of a format without a validator
    min_battery_percent: int = 30  # battery devices below this are deferred (0: no minimum)
    verify_deadline_s: int | None = None  # None: policy.verify_deadline_s

    def source(self) -> str:
        return f"rules {', '.join(self.rules)}" if self.rules else "policy defaults"


def version_permitted(eff: EffectivePolicy, entry: CatalogEntry) -> tuple[bool, str]:
    """Whether policy allows offering `entry`; the reason names the rule clause that refuses it."""
    for spec in eff.block_versions:
        if version_matches(spec, entry.numeric_version, entry.version_string):
            return False, f"version {entry.version_string} ({entry.numeric_version}) blocked by {spec!r}"
    if eff.allow_versions is not None and not any(
        version_matches(s, entry.numeric_version, entry.version_string) for s in eff.allow_versions
    ):
        return False, f"version {entry.version_string} ({entry.numeric_version}) not in allow_versions"
    if eff.pin_version is not None and not version_matches(
        eff.pin_version, entry.numeric_version, entry.version_string
    ):
        return False, f"device pinned to version {eff.pin_version!r}"
    return True, "allowed"


def payload_refusal(eff: EffectivePolicy, entry: CatalogEntry) -> str | None:
    """Why the entry's payload may not be offered (None: it may): invalid never, unknown only where allowed."""
    status = entry.payload_check
    if status == "invalid":
        return f"payload of image {entry.image_id} is invalid: {entry.payload_reason}"
    if status in ("unknown", "unchecked") and not eff.allow_unvalidated_payload:
        why = entry.payload_reason or "payload not checked yet"
        return f"payload of image {entry.image_id} is not validated ({why}); allow_unvalidated_payload is false"
    return None


# --------------------------------------------------------------------------------------------- windows
def _minutes(hhmm: str) -> int:
    h, m = hhmm.split(":")
    return int(h) * 60 + int(m)


class Window:
    """A recurring local-time window (see config.TimeWindow)."""

    def __init__(self, name: str, cfg: TimeWindow, default_tz: str) -> None:
        self.name = name
        self.tz = ZoneInfo(cfg.timezone or default_tz)
        self.days = frozenset(_DAY_INDEX[d] for d in cfg.days)
        self.start = _minutes(cfg.start)
        self.end = _minutes(cfg.end)
        self.crosses_midnight = self.end <= self.start
        self.text = f"{name} ({','.join(cfg.days)} {cfg.start}-{cfg.end} {self.tz.key})"

    def is_open(self, t: float) -> bool:
        local = dt.datetime.fromtimestamp(t, self.tz)
        minute = local.hour * 60 + local.minute + local.second / 60
        day = local.weekday()
        if not self.crosses_midnight:
            return day in self.days and self.start <= minute < self.end
        return (day in self.days and minute >= self.start) or (
            (day - 1) % 7 in self.days and minute < self.end
        )

    def next_open(self, t: float) -> float:
        """`t` when open, else the next opening time (epoch seconds)."""
        if self.is_open(t):
            return t
        local_date = dt.datetime.fromtimestamp(t, self.tz).date()
        for d in range(0, 9):
            date = local_date + dt.timedelta(days=d)
            if date.weekday() not in self.days:
                continue
            # build from wall-clock components so a DST change moves the instant, not the local time
            day = date + dt.timedelta(days=self.start // 1440)
            h, m = divmod(self.start % 1440, 60)
            cand = dt.datetime(day.year, day.month, day.day, h, m, tzinfo=self.tz)
            ts = cand.timestamp()
            if ts > t:
                return ts
        raise ValueError(f"window {self.name} never opens")  # unreachable: days is never empty when validated

    def describe_next(self, t: float) -> str:
        nxt = self.next_open(t)
        return dt.datetime.fromtimestamp(nxt, self.tz).strftime("%Y-%m-%d %H:%M %Z")


# ---------------------------------------------------------------------------------------------- policy
class Policy:
    """The compiled policy section: rule folding and named windows."""

    def __init__(self, cfg: PolicyConfig) -> None:
        self.cfg = cfg
        self.windows = {name: Window(name, w, cfg.timezone) for name, w in cfg.windows.items()}

    def effective(self, rec: DeviceRecord) -> EffectivePolicy:
        c = self.cfg
        allow: tuple[VersionSpec, ...] | None = None
        block: list[VersionSpec] = []
        pin: VersionSpec | None = None
        downgrade, consent, auto = c.allow_downgrade, c.require_consent, c.auto_approve
        dl_win, ap_win = c.download_window, c.apply_window
        unvalidated, min_battery, deadline = c.allow_unvalidated_payload, c.min_battery_percent, None
        names: list[str] = []
        for i, rule in enumerate(c.rules):
            if not selector_matches(rule.match, rec):
                continue
            names.append(rule.name or f"#{i}")
            block.extend(rule.block_versions)
            if rule.allow_versions is not None:
                allow = tuple(rule.allow_versions)
            if rule.pin_version is not None:
                pin = rule.pin_version
            if rule.allow_downgrade is not None:
                downgrade = rule.allow_downgrade
            if rule.require_consent is not None:
                consent = rule.require_consent
            if rule.auto_approve is not None:
                auto = rule.auto_approve
            if rule.download_window is not None:
                dl_win = rule.download_window
            if rule.apply_window is not None:
                ap_win = rule.apply_window
            if rule.allow_unvalidated_payload is not None:
                unvalidated = rule.allow_unvalidated_payload
            if rule.min_battery_percent is not None:
                min_battery = rule.min_battery_percent
            if rule.verify_deadline_s is not None:
                deadline = rule.verify_deadline_s
        # the owner's per-device overrides (DeviceRecord.pinned_version / excluded) come last: they win over rules
        if rec.pinned_version is not None:
            pin = rec.pinned_version
            names.append(f"device pin {rec.pinned_version!r}")
        if rec.excluded:
            block.append("*")  # a shell pattern matching every version string: nothing is ever offered
            names.append("device excluded by its owner")
        return EffectivePolicy(
            allow_versions=allow,
            block_versions=tuple(block),
            pin_version=pin,
            allow_downgrade=downgrade,
            require_consent=consent,
            auto_approve=auto,
            download_window=None if dl_win == "always" else dl_win,
            apply_window=None if ap_win == "always" else ap_win,
            rules=tuple(names),
            allow_unvalidated_payload=unvalidated,
            min_battery_percent=min_battery,
            verify_deadline_s=deadline,
        )

    def window(self, name: str | None) -> Window | None:
        return None if name is None else self.windows[name]


# --------------------------------------------------------------------------------------------- budgets
@dataclass(slots=True)
class _Slot:
    protocol: str
    network: str
    sleepy: bool


@dataclass(slots=True)
class BudgetTracker:
    """Transfer slots by scope. A device holds at most one slot; `acquire` is idempotent for a holder."""

    cfg: PolicyConfig
    holders: dict[str, _Slot] = field(default_factory=dict)
    by_protocol: dict[str, int] = field(default_factory=dict)
    by_network: dict[str, int] = field(default_factory=dict)
    # non-sleepy devices refused a slot recently, per scope: scope -> {device id: until}, oldest first
    waiting: dict[str, OrderedDict[str, float]] = field(default_factory=dict)
    _waiter_scope: dict[str, str] = field(default_factory=dict)

    def limits(self, protocol: str, network: str) -> list[tuple[str, int, int]]:
        """(scope key, limit, in use) for every scope a device is in."""
        b = self.cfg.budgets
        out = [("global", b.global_, len(self.holders))]
        if protocol in b.per_protocol:
            out.append((f"protocol {protocol}", b.per_protocol[protocol], self.by_protocol.get(protocol, 0)))
        net_limit = b.per_network.get(network, b.per_network_default)
        if net_limit is not None:
            out.append((f"network {network}", net_limit, self.by_network.get(network, 0)))
        return out

    def holds(self, device_id: str) -> bool:
        return device_id in self.holders

    def acquire(
        self, device_id: str, protocol: str, network: str, sleepy: bool, now: float
    ) -> tuple[bool, str]:
        """Take a slot or say which budget is full (or which router has priority)."""
        if device_id in self.holders:
            return True, "already holds a transfer slot"
        limits = self.limits(protocol, network)
        for scope, limit, used in limits:
            if used >= limit:
                if not sleepy:
                    self._note_waiter(device_id, scope, now + 2 * self.cfg.busy_retry_s)
                return False, f"{scope} transfer budget full ({used}/{limit} active)"
        if sleepy:
            for scope, _, _ in limits:
                other = self._first_waiter(scope, now, device_id)
                if other is not None:
                    return False, f"router/mains-powered device {other} waits for the {scope} budget first"
        self.forget_waiter(device_id)
        self.holders[device_id] = _Slot(protocol, network, sleepy)
        self.by_protocol[protocol] = self.by_protocol.get(protocol, 0) + 1
        self.by_network[network] = self.by_network.get(network, 0) + 1
        return True, "transfer slot granted"

    def release(self, device_id: str) -> None:
        slot = self.holders.pop(device_id, None)
        if slot is None:
            return
        self.by_protocol[slot.protocol] -= 1
        self.by_network[slot.network] -= 1

    def _note_waiter(self, device_id: str, scope: str, until: float) -> None:
        self.forget_waiter(device_id)
        q = self.waiting.setdefault(scope, OrderedDict())
        q[device_id] = until  # `until` only grows with time, so each queue stays ordered by expiry
        self._waiter_scope[device_id] = scope

    def _first_waiter(self, scope: str, now: float, other_than: str) -> str | None:
        q = self.waiting.get(scope)
        while q:
            dev, until = next(iter(q.items()))
            if until > now:
                break
            q.popitem(last=False)
            self._waiter_scope.pop(dev, None)
        if not q:
            return None
        for dev in q:  # the first one that is not the asker (almost always the first)
            if dev != other_than:
                return dev
        return None

    def forget_waiter(self, device_id: str) -> None:
        scope = self._waiter_scope.pop(device_id, None)
        if scope is not None:
            self.waiting[scope].pop(device_id, None)

    def over_budget(self) -> list[str]:
        """Scopes whose holders exceed the limit (only possible right after a reload lowered a budget)."""
        out = []
        b = self.cfg.budgets
        if len(self.holders) > b.global_:
            out.append("global")
        for p, n in self.by_protocol.items():
            if p in b.per_protocol and n > b.per_protocol[p]:
                out.append(f"protocol {p}")
        for net, n in self.by_network.items():
            lim = b.per_network.get(net, b.per_network_default)
            if lim is not None and n > lim:
                out.append(f"network {net}")
        return out
