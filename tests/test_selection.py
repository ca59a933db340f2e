"""Version selection: Matter and Zigbee applicability rules, specificity, downgrades, the lookup index."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st
from store_helpers import entry

from gateway.store.model import CatalogEntry, DeviceDescriptor
from gateway.store.selection import SelectionIndex, explain_selection, rank, rejection, select_image

IEEE = "00:12:4b:00:01:ab:cd:ef"


def matter_dev(version: int = 5, vid: int = 0xFFF1, pid: int = 0x8001) -> DeviceDescriptor:
    return DeviceDescriptor("matter", vid, pid, version)


def zb_dev(version: int = 5, mfr: int = 0x117C, itype: int = 0x2811, **kw: object) -> DeviceDescriptor:
    return DeviceDescriptor("zigbee", mfr, itype, version, **kw)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------- matter
def test_matter_picks_newest_valid_applicable() -> None:
    cands = [
        entry(version=3),
        entry(version=10),
        entry(version=20, valid=False),
        entry(version=30, min_applicable=6),  # device at 5 is below the range
        entry(version=8, max_applicable=4),  # device at 5 is above the range
        entry(version=9, max_applicable=5),
        entry(version=40, vendor_id=0xFFF2),
        entry(version=41, product_id=0x8002),
        entry("zigbee", 0xFFF1, 0x8001, 50),
    ]
    assert select_image(cands, matter_dev(5)).numeric_version == 10  # type: ignore[union-attr]
    best, why = explain_selection(cands, matter_dev(5))
    assert best is not None and best.numeric_version == 10
    assert "update to 10 (10) from 5: best of 2 applicable of 9 candidates" in why


def test_matter_never_same_version_and_downgrade_only_when_allowed() -> None:
    cands = [entry(version=3), entry(version=5)]
    assert select_image(cands, matter_dev(5)) is None
    got = select_image(cands, matter_dev(5), allow_downgrade=True)
    assert got is not None and got.numeric_version == 3
    # allowed downgrade still prefers an upgrade when there is one
    assert select_image([*cands, entry(version=6)], matter_dev(5), allow_downgrade=True).numeric_version == 6  # type: ignore[union-attr]


def test_explain_names_reasons() -> None:
    _, why = explain_selection([], matter_dev())
    assert why == "no matter images for VID/PID FFF1/8001"
    cands = [entry(version=20, valid=False), entry(version=2), entry(version=5)]
    best, why = explain_selection(cands, matter_dev(5))
    assert best is None
    assert why.startswith("none of 3 candidates applies: ")
    assert (
        "(20) is marked invalid" in why
        and "(2) would be a downgrade" in why
        and "(5) is the installed version" in why
    )


# ------------------------------------------------------------------------------------------- zigbee
def test_zigbee_wildcards_and_specificity() -> None:
    wild_both = entry("zigbee", 0xFFFF, 0xFFFF, 100)
    wild_mfr = entry("zigbee", 0xFFFF, 0x2811, 90)
    exact = entry("zigbee", 0x117C, 0x2811, 50)
    dest = entry("zigbee", 0x117C, 0x2811, 20, destination=IEEE)
    dev = zb_dev(5, ieee="00:12:4B:00:01:AB:CD:EF")
    assert select_image([wild_both, wild_mfr, exact, dest], dev) == dest
    assert select_image([wild_both, wild_mfr, exact], dev) == exact  # exact beats newer wildcard
    assert select_image([wild_both, wild_mfr], dev) == wild_mfr
    assert select_image([wild_both], dev) == wild_both
    # the destination-specific file is for one device only
    assert select_image([dest], zb_dev(5, ieee="00:12:4b:00:01:ab:cd:ee")) is None
    assert select_image([dest], zb_dev(5)) is None
    assert select_image([entry("zigbee", 0x117D, 0x2811, 9)], dev) is None
    assert select_image([entry("zigbee", 0x117C, 0x2812, 9)], dev) is None


def test_zigbee_hardware_range_and_model_restriction() -> None:
    hw = entry("zigbee", 0x117C, 0x2811, 50, min_hw=2, max_hw=4)
    assert select_image([hw], zb_dev(hardware_version=1)) is None
    assert select_image([hw], zb_dev(hardware_version=5)) is None
    assert select_image([hw], zb_dev(hardware_version=3)) == hw
    assert select_image([hw], zb_dev()) == hw  # device did not say: not refused (zigpy behaviour)
    model = entry("zigbee", 0x117C, 0x2811, 50, model_ids=("lumi.a", "lumi.b"))
    plain = entry("zigbee", 0x117C, 0x2811, 60, description="newer, but for any model")
    assert select_image([model], zb_dev(model="lumi.c")) is None
    assert select_image([model], zb_dev()) is None
    assert select_image([model, plain], zb_dev(model="lumi.b")) == model
    assert select_image([model, plain], zb_dev(model="lumi.c")) == plain
    ranged = entry("zigbee", 0x117C, 0x2811, 50, min_applicable=3, max_applicable=4)
    assert select_image([ranged], zb_dev(5)) is None
    assert select_image([ranged], zb_dev(4)) == ranged
    assert "needs hardware version >= 2" in (rejection(hw, zb_dev(hardware_version=1)) or "")


def test_order_of_candidates_does_not_matter() -> None:
    twins = [entry("zigbee", 0x117C, 0x2811, 50, description=str(i)) for i in range(5)]
    picks = {select_image(random.Random(i).sample(twins, 5), zb_dev()) for i in range(10)}
    assert len(picks) == 1
    assert picks.pop() == min(twins, key=lambda e: e.image_id)


# ------------------------------------------------------------------------------------------- index
def test_index_candidates_match_brute_force() -> None:
    rng = random.Random(7)
    entries = []
    for i in range(2000):
        proto = rng.choice(["matter", "zigbee"])
        v = rng.choice([1, 2, 3, 0xFFFF])
        p = rng.choice([1, 2, 0xFFFF])
        entries.append(entry(proto, v, p, rng.randrange(0, 50), description=str(i)))
    index = SelectionIndex.build(entries)
    assert len(index) == 2000
    for proto in ("matter", "zigbee"):
        for v in (1, 2, 3, 4):
            for p in (1, 2, 3):
                dev = DeviceDescriptor(proto, v, p, 25)  # type: ignore[arg-type]
                cand = index.candidates(dev)
                assert {e.image_id for e in cand} >= {
                    e.image_id for e in entries if rejection(e, dev, allow_downgrade=True) is None
                }
                assert index.select(dev) == select_image(entries, dev)


# ------------------------------------------------------------------------------------------- properties
versions = st.integers(0, 12)
# Restrictions are mostly absent so that many drawn entries are applicable and compete with each other.
opt_versions = st.sampled_from([None, None, None]) | versions
mostly_true = st.sampled_from([True, True, True, False])


@st.composite
def zigbee_entries(draw: st.DrawFn) -> CatalogEntry:
    lo_hw = draw(st.none() | st.integers(0, 3))
    return entry(
        "zigbee",
        draw(st.sampled_from([0x1000, 0x1001, 0xFFFF])),
        draw(st.sampled_from([1, 2, 0xFFFF])),
        draw(versions),
        valid=draw(mostly_true),
        min_applicable=draw(opt_versions),
        max_applicable=draw(opt_versions),
        min_hw=lo_hw,
        max_hw=None if lo_hw is None else lo_hw + draw(st.integers(0, 2)),
        destination=draw(st.sampled_from([None, None, IEEE, "00:00:00:00:00:00:00:01"])),
        model_ids=draw(st.sampled_from([(), ("m1",), ("m1", "m2")])),
        description=str(draw(st.integers(0, 3))),
    )


@st.composite
def zigbee_devices(draw: st.DrawFn) -> DeviceDescriptor:
    return zb_dev(
        draw(versions),
        draw(st.sampled_from([0x1000, 0x1001])),
        draw(st.sampled_from([1, 2])),
        hardware_version=draw(st.none() | st.integers(0, 5)),
        ieee=draw(st.sampled_from([None, IEEE, IEEE])),
        model=draw(st.none() | st.sampled_from(["m1", "m2", "m3"])),
    )


def _independently_applicable(e: CatalogEntry, d: DeviceDescriptor, allow_downgrade: bool) -> bool:
    """The rules restated without sharing code with the implementation."""
    ok = (
        e.protocol == d.protocol
        and e.vendor_id in (d.vendor_id, 0xFFFF)
        and e.product_id in (d.product_id, 0xFFFF)
        and e.valid
        and (e.min_applicable is None or e.min_applicable <= d.current_version)
        and (e.max_applicable is None or d.current_version <= e.max_applicable)
        and (e.destination is None or e.destination == d.ieee)
        and (not e.model_ids or d.model in e.model_ids)
        and (d.hardware_version is None or e.min_hw is None or e.min_hw <= d.hardware_version)
        and (d.hardware_version is None or e.max_hw is None or d.hardware_version <= e.max_hw)
    )
    if not ok or e.numeric_version == d.current_version:
        return False
    return e.numeric_version > d.current_version or allow_downgrade


def _spec(e: CatalogEntry) -> tuple[bool, int, bool, int]:
    """Specificity restated: device-specific file, then exact fields, then model restriction, then version."""
    exact = sum(1 for v in (e.vendor_id, e.product_id) if v != 0xFFFF)
    return (e.destination is not None, exact, bool(e.model_ids), e.numeric_version)


@settings(max_examples=300, deadline=None)
@given(st.lists(zigbee_entries(), max_size=12), zigbee_devices(), st.booleans())
def test_property_result_is_applicable_and_maximal(
    entries: list[CatalogEntry], dev: DeviceDescriptor, allow_downgrade: bool
) -> None:
    got = select_image(entries, dev, allow_downgrade=allow_downgrade)
    applicable = [e for e in entries if _independently_applicable(e, dev, allow_downgrade)]
    if got is None:
        assert applicable == []
        return
    assert _independently_applicable(got, dev, allow_downgrade)
    assert all(_spec(e) <= _spec(got) for e in applicable)
    assert rank(got, dev) == max(rank(e, dev) for e in applicable)
    # among equally specific entries, the version is the highest
    same_spec = [e for e in applicable if _spec(e)[:3] == _spec(got)[:3]]
    assert got.numeric_version == max(e.numeric_version for e in same_spec)
    assert SelectionIndex.build(entries).select(dev, allow_downgrade=allow_downgrade) == got


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.builds(
            lambda v, ok, lo, hi: entry(version=v, valid=ok, min_applicable=lo, max_applicable=hi),
            versions,
            st.booleans(),
            opt_versions,
            opt_versions,
        ),
        max_size=10,
    ),
    versions,
)
def test_property_matter_never_downgrades_unless_allowed(entries: list[CatalogEntry], current: int) -> None:
    dev = matter_dev(current)
    got = select_image(entries, dev)
    if got is not None:
        assert got.numeric_version > current
        assert got.numeric_version == max(
            e.numeric_version for e in entries if _independently_applicable(e, dev, False)
        )
    down = select_image(entries, dev, allow_downgrade=True)
    if got is not None:
        assert down == got  # allowing downgrades never replaces an available upgrade
    elif down is not None:
        assert down.numeric_version < current
